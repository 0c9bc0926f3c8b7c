"""A torchrun entry point for tests/distributed/test_distributed.py: resume a sharded run (``train.strategy: fsdp``) on
this torchrun's processes, and write the whole state they loaded (rank 0), for comparison with the
checkpoint. Usage: ``torchrun ... tests/helpers/sharded_worker.py RUN_FOLDER OUT.pt RECIPE [OVERRIDES]``.

It ends as the ``cl-run`` command does under torchrun, through ``distributed.exit_process``: the modules it built
keep the gloo group's threads running past ``distributed.stop()``, and a script that simply ended could abort in
the interpreter's finalization (SIGABRT, "terminate called without an active exception"; see there)."""

import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

import clrun
from clrun import distributed
from clrun.training.checkpointing import open_run
from clrun.training.checkpointing.state import trained
from clrun.training.setup import prepare

folder, out, recipe_path, *overrides = sys.argv[1:]
distributed.start("cpu")
setup = prepare(clrun.load_recipe(recipe_path, overrides), "train", torch.device("cpu"))
with open_run(setup, folder, [], False) as (run, _):
    whole = StateDictOptions(full_state_dict=True)
    state = {"network": get_model_state_dict(setup.parts.network, options=whole),
             "optimizer": get_optimizer_state_dict(trained(setup.parts), setup.parts.optimizer, options=whole),
             "step": run.step, "processes": distributed.world_size()}
    if distributed.is_main():
        torch.save(state, out)
distributed.stop()
distributed.exit_process(0)
