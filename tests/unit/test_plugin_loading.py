"""Plugin loading against fake installed distributions.

Each test writes ``<name>-<version>.dist-info/`` folders (METADATA and entry_points.txt) and the plugin
modules into ``tmp_path`` and puts ``tmp_path`` on ``sys.path``: ``importlib.metadata`` then finds them
exactly like installed packages. Other installed plugins (the example plugin, when installed) may
load too; the tests only look at the fake ones and the built-ins.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import clrun
from clrun import plugin_manager
from clrun.cli import main
from clrun.errors import ComponentError, PluginLoadError, UserError
from clrun.plugin_manager import PluginWarning, load_registry
from clrun.registry import UnknownComponentError
from clrun.training.callbacks.hooks import run_hooks


# -- fixtures ---------------------------------------------------------------------------------------
class FakeSite:
    """A folder of fake installed distributions; ``activate()`` puts it on sys.path."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        self.modules: list[str] = []

    def add(self, dist: str, entry_points: dict[str, str], modules: dict[str, str], version: str = "1.0") -> None:
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[clrun]\n{lines}", encoding="utf-8")
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            self.modules.append(module)

    def activate(self) -> None:
        self.monkeypatch.syspath_prepend(str(self.root))
        importlib.invalidate_caches()  # also clears importlib.metadata's directory caches

    def cleanup(self) -> None:
        for module in self.modules:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """No load switches from the environment, and no process-wide registry leaking between tests."""
    monkeypatch.delenv(plugin_manager.ENV_NO_AUTOLOAD, raising=False)
    monkeypatch.delenv(plugin_manager.ENV_STRICT, raising=False)
    plugin_manager.set_default_registry(None)
    yield
    plugin_manager.set_default_registry(None)


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = FakeSite(tmp_path, monkeypatch)
    yield s
    s.cleanup()


GOOD_PLUGIN = """
    import torch
    import clrun

    class Zero(torch.nn.Module):
        def forward(self, out):
            return out.projections[0].sum() * 0


    @clrun.hookimpl
    def clrun_components():
        return [clrun.Component("loss", "fakegood/zero", Zero, "a loss that is always zero")]
"""

BROKEN_PLUGIN = """
    import clrun

    raise RuntimeError("boom from fake_broken_mod")
"""


def add_good(site: FakeSite) -> None:
    site.add("fake-good", {"fakegood": "fake_good_mod"}, {"fake_good_mod": GOOD_PLUGIN}, version="2.3")


def add_broken(site: FakeSite) -> None:
    site.add("fake-broken", {"fakebroken": "fake_broken_mod"}, {"fake_broken_mod": BROKEN_PLUGIN}, version="0.4")


def broken_named(registry, name):
    found = [b for b in registry.broken if b.name == name]
    assert found, f"{name!r} is not among the broken plugins: {registry.broken}"
    return found[0]


def load_quietly(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        return load_registry(**kwargs)


# -- (a) a plugin that fails to import ---------------------------------------------------------------
def test_import_error_is_recorded_warned_and_skipped(site):
    add_good(site)
    add_broken(site)
    site.activate()
    with pytest.warns(PluginWarning, match="fakebroken") as record:
        registry = load_registry(autoload=True, strict=False)
    broken = broken_named(registry, "fakebroken")
    assert (broken.dist, broken.version) == ("fake-broken", "0.4")
    assert "RuntimeError" in broken.error and "boom from fake_broken_mod" in broken.error
    assert any("boom from fake_broken_mod" in str(w.message) for w in record)
    # The others still load: the good fake plugin and every built-in.
    assert "fakegood/zero" in registry.names("loss")
    assert "clrun/ntxent" in registry.names("loss")
    good = [p for p in registry.plugins if p.name == "fakegood"]
    assert good and (good[0].dist, good[0].version, good[0].components) == ("fake-good", "2.3", 1)
    assert registry.get("loss", "fakegood/zero").provider == "fakegood (fake-good 2.3)"
    assert "fakebroken" not in [p.name for p in registry.plugins]


def test_strict_loading_raises_naming_the_broken_plugin(site):
    add_good(site)
    add_broken(site)
    site.activate()
    with pytest.raises(PluginLoadError, match="fakebroken") as info:
        load_registry(autoload=True, strict=True)
    assert "fake-broken" in str(info.value) and "boom from fake_broken_mod" in str(info.value)
    assert isinstance(info.value, UserError)


def test_strict_loading_from_the_environment(site, monkeypatch):
    add_broken(site)
    site.activate()
    monkeypatch.setenv(plugin_manager.ENV_STRICT, "1")
    with pytest.raises(PluginLoadError, match="fakebroken"):
        load_registry()
    monkeypatch.setenv(plugin_manager.ENV_STRICT, "0")
    assert broken_named(load_quietly(), "fakebroken")


def test_a_hook_that_raises_or_returns_junk_breaks_only_its_plugin(site):
    site.add("fake-raises", {"fakeraises": "fake_raises_mod"}, {"fake_raises_mod": """
        import clrun

        @clrun.hookimpl
        def clrun_components():
            raise KeyError("no such thing")
    """})
    site.add("fake-junk", {"fakejunk": "fake_junk_mod"}, {"fake_junk_mod": """
        import clrun

        @clrun.hookimpl
        def clrun_components():
            return [clrun.Component("loss", "fakejunk/ok", dict), "not a component"]
    """})
    add_good(site)
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    assert "no such thing" in broken_named(registry, "fakeraises").error
    assert "not a component" in broken_named(registry, "fakejunk").error
    assert "fakejunk/ok" not in registry.names("loss"), "a broken plugin must leave none of its components behind"
    assert "fakegood/zero" in registry.names("loss")


# -- (b) two plugins offering the same (kind, name) -------------------------------------------------
DUPLICATE = """
    import torch
    import clrun

    @clrun.hookimpl
    def clrun_components():
        return [
            clrun.Component("loss", "{own}/extra", torch.nn.Identity),
            clrun.Component("loss", "{name}", torch.nn.Identity),
        ]
"""


def test_duplicate_name_breaks_the_second_plugin_naming_both(site):
    # Entry points load in name order: "dupa" first, so "dupb" is the second provider.
    site.add("fake-dup-a", {"dupa": "fake_dup_a"}, {"fake_dup_a": DUPLICATE.format(own="dupa", name="shared/same")})
    site.add("fake-dup-b", {"dupb": "fake_dup_b"}, {"fake_dup_b": DUPLICATE.format(own="dupb", name="shared/same")}, version="7.0")
    site.activate()
    with pytest.warns(PluginWarning, match="dupb"):
        registry = load_registry(autoload=True, strict=False)
    broken = broken_named(registry, "dupb")
    assert "shared/same" in broken.error
    assert "dupa (fake-dup-a 1.0)" in broken.error and "dupb (fake-dup-b 7.0)" in broken.error
    assert "dupa" not in [b.name for b in registry.broken]
    assert registry.get("loss", "shared/same").provider == "dupa (fake-dup-a 1.0)"
    # All or nothing: the second plugin's other component is not registered either.
    assert "dupa/extra" in registry.names("loss")
    assert "dupb/extra" not in registry.names("loss")


def test_duplicate_of_a_builtin_name_breaks_the_plugin(site):
    site.add("fake-shadow", {"shadow": "fake_shadow"}, {"fake_shadow": DUPLICATE.format(own="shadow", name="clrun/ntxent")})
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    error = broken_named(registry, "shadow").error
    assert "clrun/ntxent" in error and "shadow (fake-shadow 1.0)" in error and "cl-run" in error
    assert registry.get("loss", "clrun/ntxent").provider.endswith("(cl-run 0.1.0)")


# -- (c) a misspelled discovery hook ----------------------------------------------------------------
def test_misspelled_hook_breaks_the_plugin_and_names_the_hook(site):
    site.add("fake-typo", {"typo": "fake_typo_mod"}, {"fake_typo_mod": """
        import torch
        import clrun

        @clrun.hookimpl
        def clrun_componets():
            return [clrun.Component("loss", "typo/identity", torch.nn.Identity)]
    """})
    site.add("fake-typo2", {"typo2": "fake_typo2_mod"}, {"fake_typo2_mod": """
        def clrun_component():  # unmarked, still a clrun_* hook name: rejected, not silently ignored
            return []
    """})
    site.activate()
    with pytest.warns(PluginWarning, match="clrun_compone(ts|nt)"):
        registry = load_registry(autoload=True, strict=False)
    assert "clrun_componets" in broken_named(registry, "typo").error
    assert "clrun_component" in broken_named(registry, "typo2").error
    assert "typo/identity" not in registry.names("loss")
    with pytest.raises(PluginLoadError, match="clrun_componets"):
        load_registry(autoload=True, strict=True)


def test_hook_with_a_wrong_signature_breaks_the_plugin(site):
    site.add("fake-sig", {"fakesig": "fake_sig_mod"}, {"fake_sig_mod": """
        import clrun

        @clrun.hookimpl
        def clrun_components(registry):
            return []
    """})
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    assert "registry" in broken_named(registry, "fakesig").error


# -- (d) autoload off -------------------------------------------------------------------------------
def assert_builtins_only(registry) -> None:
    assert "clrun/ntxent" in registry.names("loss")
    assert registry.plugins and all(p.dist == "cl-run" for p in registry.plugins)
    assert registry.broken == []
    assert "fakegood/zero" not in registry.names("loss")


def test_autoload_false_loads_only_builtins(site):
    add_good(site)
    add_broken(site)
    site.activate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # the broken fake plugin is never even imported
        assert_builtins_only(load_registry(autoload=False))
    assert "fake_broken_mod" not in sys.modules and "fake_good_mod" not in sys.modules


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_environment_switch_disables_autoload(site, monkeypatch, value):
    add_good(site)
    add_broken(site)
    site.activate()
    monkeypatch.setenv(plugin_manager.ENV_NO_AUTOLOAD, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert_builtins_only(load_registry())
        assert_builtins_only(plugin_manager.default_registry())


def test_environment_switch_set_to_0_keeps_autoload(site, monkeypatch):
    add_good(site)
    site.activate()
    monkeypatch.setenv(plugin_manager.ENV_NO_AUTOLOAD, "0")
    assert "fakegood/zero" in load_registry().names("loss")
    # an explicit argument wins over the environment
    monkeypatch.setenv(plugin_manager.ENV_NO_AUTOLOAD, "1")
    assert "fakegood/zero" in load_registry(autoload=True).names("loss")


# -- (e) unknown names in a broken plugin's namespace -----------------------------------------------
def test_unknown_name_in_a_broken_plugins_namespace_names_the_plugin(site):
    add_broken(site)
    add_good(site)
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    message = registry.unknown_message("loss", "fakebroken/fancy")
    assert "fakebroken/fancy" in message
    assert "fakebroken" in message.replace("fakebroken/fancy", "") and "fake-broken" in message
    assert "boom from fake_broken_mod" in message
    with pytest.raises(UnknownComponentError, match="boom from fake_broken_mod") as info:
        registry.get("loss", "fakebroken/fancy")
    assert isinstance(info.value, ComponentError) and isinstance(info.value, UserError)
    # A name in another namespace gets no such note.
    assert "fake-broken" not in registry.unknown_message("loss", "fakegood/fancy")
    assert "fake-broken" not in registry.unknown_message("loss", "nowhere/fancy")


def test_unknown_name_through_the_public_api_names_the_broken_plugin(site):
    add_broken(site)
    site.activate()
    plugin_manager.set_default_registry(load_quietly(autoload=True, strict=False))
    with pytest.raises(ComponentError, match="fake-broken"):
        clrun.create("loss", "fakebroken/fancy")


# -- (f) the CLI with a broken plugin ---------------------------------------------------------------
def test_cli_plugins_shows_the_broken_plugin_and_stays_usable(site, capsys):
    add_good(site)
    add_broken(site)
    site.activate()
    with pytest.warns(PluginWarning, match="fakebroken"):
        code = main(["plugins"])
    out = capsys.readouterr().out
    assert code == 0
    broken_lines = [line for line in out.splitlines() if line.startswith("BROKEN")]
    assert len([line for line in broken_lines if "fakebroken" in line]) == 1, out
    line = next(line for line in broken_lines if "fakebroken" in line)
    assert "fake-broken 0.4" in line and "boom from fake_broken_mod" in line
    assert any(line.startswith("ok") and "fakegood" in line and "fake-good 2.3" in line for line in out.splitlines()), out
    assert "clrun.plugins.losses.components" in out

    with pytest.warns(PluginWarning, match="fakebroken"):
        code = main(["components", "loss"])
    out = capsys.readouterr().out
    assert code == 0
    assert "clrun/ntxent" in out and "fakegood/zero" in out and "fakebroken" not in out


def test_cli_strict_plugins_fails_cleanly(site, capsys):
    add_broken(site)
    site.activate()
    assert main(["--strict-plugins", "plugins"]) == 2
    err = capsys.readouterr().err
    assert "fakebroken" in err and "boom from fake_broken_mod" in err and "Traceback" not in err


def test_cli_no_plugins_skips_entry_points(site, capsys):
    add_broken(site)
    site.activate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert main(["--no-plugins", "plugins"]) == 0
    out = capsys.readouterr().out
    assert "BROKEN" not in out and "autoloading is off" in out


def test_cli_autoload_note_follows_the_environment_switch(site, capsys, monkeypatch):
    """`cl-run plugins` says autoloading is off exactly when the switch turns it off ("0" keeps it on)."""
    add_good(site)
    site.activate()
    monkeypatch.setenv(plugin_manager.ENV_NO_AUTOLOAD, "0")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fakegood" in out  # entry points were loaded...
    assert "autoloading is off" not in out  # ...so the listing must not claim otherwise


# -- (g) run hooks of callbacks ---------------------------------------------------------------------
class GoodCallback:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def clrun_epoch_end(self, run, epoch, metrics):
        self.epochs.append(epoch)
        metrics["seen"] = 1.0


class MisspelledCallback:
    def clrun_epoch_ends(self, run, epoch, metrics):
        pass


class MarkedMisspelledCallback:
    @clrun.hookimpl
    def clrun_run_ended(self, run, metrics):
        pass


class WrongSignatureCallback:
    def clrun_epoch_end(self, run, epoch, metrics, extra):
        pass


def test_run_hooks_call_a_correct_callback():
    cb = GoodCallback()
    hooks = run_hooks([cb])
    metrics: dict[str, float] = {}
    hooks.clrun_epoch_end(run=None, epoch=3, metrics=metrics)
    assert cb.epochs == [3] and metrics == {"seen": 1.0}


@pytest.mark.parametrize("callback, name", [(MisspelledCallback(), "clrun_epoch_ends"),
                                            (MarkedMisspelledCallback(), "clrun_run_ended")])
def test_run_hooks_reject_a_misspelled_hook(callback, name):
    with pytest.raises(UserError, match=name):
        run_hooks([GoodCallback(), callback])


def test_run_hooks_reject_a_hook_with_a_wrong_signature_as_a_user_error():
    with pytest.raises(UserError, match="clrun_epoch_end"):
        run_hooks([WrongSignatureCallback()])


# -- (h) lazy namespaces and factories offered by import path ---------------------------------------
LAZY_PLUGIN = """
    import clrun

    calls = {"names": 0, "component": []}  # what the registry asked for, and when


    def names():
        calls["names"] += 1
        return ["alpha", "beta", "gamma"]


    def component(name):
        calls["component"].append(name)
        return clrun.Component("loss", f"lazyns/{name}", "torch.nn:Identity", f"the {name} loss")


    @clrun.hookimpl
    def clrun_components():
        return [clrun.LazyComponents("loss", "lazyns", names, component, "three losses, resolved on first use"),
                clrun.Component("loss", "lazyplug/eager", "fake_lazy_impl:Eager", "offered by import path")]
"""

LAZY_IMPL = """
    import torch

    class Eager(torch.nn.Identity):
        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale
"""


def add_lazy(site: FakeSite) -> None:
    site.add("fake-lazy", {"lazyplug": "fake_lazy_mod"}, {"fake_lazy_mod": LAZY_PLUGIN, "fake_lazy_impl": LAZY_IMPL})


def test_a_lazy_namespace_is_resolved_on_first_use_and_only_as_far_as_needed(site):
    add_lazy(site)
    site.activate()
    registry = load_registry(autoload=True, strict=True)
    calls = sys.modules["fake_lazy_mod"].calls
    (info,) = [p for p in registry.plugins if p.name == "lazyplug"]
    assert (info.components, info.namespaces) == (1, ("loss lazyns/*",))
    assert calls == {"names": 0, "component": []}  # loading lists nothing
    assert [c.name for c in registry.list("loss", "clrun/*")] == [f"clrun/{n}" for n in
                                                                   ("barlow_twins", "byol", "dcl", "dclw", "dino", "gram_anchoring", "ibot", "ijepa", "lejepa", "mae", "moco", "mocov3", "nnclr", "ntxent", "simsiam", "swav", "vicreg")]
    assert [c.name for c in registry.list("loss", expand_lazy=False) if c.name.startswith("lazy")] == ["lazyplug/eager"]
    assert [n.pattern for n in registry.namespaces("loss")] == ["lazyns/*"]
    assert calls == {"names": 0, "component": []}  # neither a pattern elsewhere nor the namespace rows resolve it

    beta = registry.get("loss", "lazyns/beta")
    assert (beta.kind, beta.name, beta.summary) == ("loss", "lazyns/beta", "the beta loss")
    assert beta.provider == "lazyplug (fake-lazy 1.0)"
    assert calls == {"names": 1, "component": ["beta"]}
    assert registry.get("loss", "lazyns/beta") is beta and registry.has("loss", "lazyns/alpha")
    assert calls == {"names": 1, "component": ["beta", "alpha"]}  # the names are asked for once

    assert [c.name for c in registry.list("loss", "lazyns/[bg]*")] == ["lazyns/beta", "lazyns/gamma"]
    assert "lazyns/gamma" in registry.names("loss") and "lazyplug/eager" in registry.names("loss")
    assert not registry.has("loss", "lazyns/delta") and not registry.has("backbone", "lazyns/alpha")
    with pytest.raises(UnknownComponentError, match=r"^unknown loss 'lazyns/gama'; did you mean 'lazyns/gamma' or "):
        registry.get("loss", "lazyns/gama")


def test_components_of_a_lazy_namespace_and_by_import_path_build_through_the_api(site):
    add_lazy(site)
    site.activate()
    plugin_manager.set_default_registry(load_registry(autoload=True, strict=True))
    assert type(clrun.create("loss", "lazyns/alpha")).__name__ == "Identity"
    eager = clrun.create("loss", "lazyplug/eager", scale=2)
    assert (type(eager).__name__, eager.scale) == ("Eager", 2.0)  # validated and coerced by the factory's hints
    assert clrun.components("loss", "lazyplug/*")[0].factory is sys.modules["fake_lazy_impl"].Eager
    with pytest.raises(ComponentError, match=r"unknown key 'scael' for loss 'lazyplug/eager'; did you mean 'scale'\?"):
        clrun.create("loss", "lazyplug/eager", scael=2)
    assert {c.name for c in clrun.components("loss", "lazyns/*")} == {"lazyns/alpha", "lazyns/beta", "lazyns/gamma"}


def test_a_factory_that_cannot_be_imported_is_an_error_at_the_recipe_entry(site, tmp_path):
    site.add("fake-badpath", {"badpath": "fake_badpath_mod"}, {"fake_badpath_mod": """
        import clrun

        @clrun.hookimpl
        def clrun_components():
            return [clrun.Component("loss", "badpath/gone", "fake_no_such_module:Loss", "its module is missing")]
    """})
    site.activate()
    registry = load_registry(autoload=True, strict=True)  # listing it is fine: nothing is imported yet
    assert registry.get("loss", "badpath/gone").summary == "its module is missing"
    with pytest.raises(ComponentError) as info:
        registry.get("loss", "badpath/gone").factory
    assert str(info.value) == ("loss 'badpath/gone' (offered by badpath (fake-badpath 1.0)): its factory "
                               "'fake_no_such_module:Loss' cannot be imported: ModuleNotFoundError: "
                               "No module named 'fake_no_such_module'")
    plugin_manager.set_default_registry(registry)
    with pytest.raises(ComponentError, match=r"^clrun.create\('loss', 'badpath/gone'\): .name: loss 'badpath/gone' "
                                             r"\(offered by badpath \(fake-badpath 1.0\)\): its factory"):
        clrun.create("loss", "badpath/gone")


def test_a_lazy_namespace_that_cannot_list_its_names_is_an_error_on_use(site):
    site.add("fake-nonames", {"nonames": "fake_nonames_mod"}, {"fake_nonames_mod": """
        import clrun

        def names():
            raise ImportError("upstream library missing")

        @clrun.hookimpl
        def clrun_components():
            return [clrun.LazyComponents("backbone", "nonames", names, lambda name: None)]
    """})
    site.activate()
    registry = load_registry(autoload=True, strict=True)
    with pytest.raises(ComponentError, match=r"^the backbone namespace 'nonames/\*' of nonames \(fake-nonames 1.0\) "
                                             r"cannot list its names: ImportError: upstream library missing$"):
        registry.get("backbone", "nonames/x")
    assert registry.has("backbone", "timm/resnet18")  # other namespaces are unaffected


@pytest.mark.parametrize("offer, message", [
    ('clrun.Component("loss", "junkpath/x", "not a path", "")', "must be a callable or an import path 'package.module:Name'"),
    ('clrun.LazyComponents("loss", "junk/ns", list, list)', "namespace 'junk/ns' must be letters, digits"),
    ('clrun.LazyComponents("losses", "junkns", list, list)', "unknown kind 'losses'"),
])
def test_malformed_offers_break_only_their_plugin(site, offer, message):
    site.add("fake-malformed", {"malformed": "fake_malformed_mod"}, {"fake_malformed_mod": f"""
        import clrun

        @clrun.hookimpl
        def clrun_components():
            return [{offer}]
    """})
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    assert message in broken_named(registry, "malformed").error
    assert registry.has("loss", "clrun/ntxent")


def test_a_name_inside_another_plugins_lazy_namespace_is_a_duplicate(site):
    # The built-ins own every backbone named timm/*: a plugin's own timm/ backbone is refused without
    # listing timm's models (which would import timm for every command).
    site.add("fake-intruder", {"intruder": "fake_intruder_mod"}, {"fake_intruder_mod": """
        import clrun

        @clrun.hookimpl
        def clrun_components():
            return [clrun.Component("backbone", "timm/my_net", "torch.nn:Identity")]
    """}, version="3.1")
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    assert broken_named(registry, "intruder").error == (
        "DuplicateComponentError: backbone 'timm/my_net' is offered twice: by intruder (fake-intruder 3.1), and by "
        f"clrun.plugins.backbones.components (cl-run {clrun.__version__}), which offers every backbone named timm/*; uninstall one "
        "of them (a plugin's names belong in its own namespace)")
    assert not registry.has("backbone", "timm/my_net")


def test_a_lazy_namespace_offered_twice_or_over_existing_names_breaks_the_second_plugin(site):
    lazy = """
        import clrun

        @clrun.hookimpl
        def clrun_components():
            return [clrun.LazyComponents("{kind}", "{namespace}", lambda: ["x"], lambda name: None)]
    """
    # Entry points load in name order: the "z" plugins come after the built-ins and the good plugin.
    site.add("fake-ztorch", {"ztorch": "fake_ztorch"}, {"fake_ztorch": lazy.format(kind="optimizer", namespace="torch")})
    site.add("fake-zgood", {"zgood": "fake_zgood"}, {"fake_zgood": lazy.format(kind="loss", namespace="fakegood")})
    add_good(site)
    site.activate()
    registry = load_quietly(autoload=True, strict=False)
    assert broken_named(registry, "ztorch").error == (
        "DuplicateComponentError: every optimizer named 'torch/*' is offered twice: by clrun.plugins.optim.components "
        f"(cl-run {clrun.__version__}) and by ztorch (fake-ztorch 1.0); uninstall one of them (a plugin's names "
        "belong in its own namespace)")
    # A namespace named after another installed plugin is that plugin's: zgood's offer is skipped, zgood loads.
    assert "zgood" not in [b.name for b in registry.broken] and "zgood" in [p.name for p in registry.plugins]
    assert registry.get("loss", "fakegood/zero").provider == "fakegood (fake-good 2.3)"
    assert [n.provider for n in registry.namespaces("optimizer")] == [f"clrun.plugins.optim.components (cl-run {clrun.__version__})"]


# -- plugin authoring: namespaces, --disable-plugin, tracebacks, component help, pipes ------------------
SQUATTER = """
    import torch
    import clrun

    class Zero(torch.nn.Module):
        def forward(self, out):
            return out.projections[0].sum() * 0

    @clrun.hookimpl
    def clrun_components():
        return [clrun.Component("loss", "fakegood/taken", Zero, "in another plugin's namespace"),
                clrun.Component("loss", "squat/own", Zero, "in its own namespace")]
"""


def test_a_name_in_another_plugins_namespace_breaks_only_that_component(site):
    add_good(site)
    site.add("squatter", {"squat": "squat_mod"}, {"squat_mod": SQUATTER}, version="9.9")
    site.activate()
    with pytest.warns(PluginWarning) as record:
        registry = load_registry(autoload=True, strict=False)
    assert registry.broken == []
    assert {"fakegood/zero", "squat/own"} <= set(registry.names("loss"))
    assert "fakegood/taken" not in registry.names("loss")
    assert any(str(w.message) == "plugin squat (squatter 9.9) offers loss 'fakegood/taken' in the namespace of "
               "plugin 'fakegood'; that component is skipped (a plugin's names belong in its own namespace)"
               for w in record)


def test_two_distributions_with_one_entry_point_name_are_reported(site):
    add_good(site)
    site.add("fake-good-fork", {"fakegood": "fake_good_mod"}, {}, version="0.1")
    site.activate()
    with pytest.warns(PluginWarning, match="also installed by"):
        registry = load_registry(autoload=True, strict=False)
    (broken,) = registry.broken
    assert broken.name == "fakegood" and "uninstall one of the two" in broken.error
    assert "fakegood/zero" in registry.names("loss")  # the first one still loads


def test_disable_plugin_leaves_one_out_and_says_so(site, capsys):
    add_good(site)
    add_broken(site)
    site.activate()
    assert main(["--disable-plugin", "fakebroken", "--disable-plugin", "fakegood", "plugins"]) == 0
    out = capsys.readouterr().out
    assert "off     fakegood" in out and "off     fakebroken" in out and "BROKEN" not in out
    assert main(["--disable-plugin", "fakegood", "components", "loss", "fakegood/zero"]) == 1
    assert "(plugin 'fakegood' is disabled by --disable-plugin)" in capsys.readouterr().err


def test_plugins_verbose_shows_the_broken_plugins_traceback(site, capsys):
    add_broken(site)
    site.activate()
    with pytest.warns(PluginWarning):
        assert main(["plugins", "-v"]) == 0
    out = capsys.readouterr().out
    assert "Traceback (most recent call last)" in out and 'raise RuntimeError("boom from fake_broken_mod")' in out


def test_an_unknown_name_with_plugins_off_says_they_are_off(site, capsys):
    add_good(site)
    site.activate()
    assert main(["--no-plugins", "components", "loss", "fakegood/zero"]) == 1
    assert "(installed plugins are off: --no-plugins or CLRUN_DISABLE_PLUGIN_AUTOLOAD; only built-ins are loaded)" in \
        capsys.readouterr().err


def test_a_plugin_warning_is_one_line(site):
    import subprocess

    add_broken(site)
    env = {**os.environ, "PYTHONPATH": str(site.root)}
    done = subprocess.run([sys.executable, "-m", "clrun", "plugins"], env=env, capture_output=True, text=True, timeout=120)
    err = done.stderr
    assert err.startswith("cl-run: warning: plugin 'fakebroken' from fake-broken 0.4 failed to load: RuntimeError")
    assert "warnings.warn" not in err and "cli.py" not in err


def test_component_help_shows_keys_types_defaults_and_docstring(capsys):
    assert main(["--no-plugins", "components", "callback", "clrun/knn"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "callback clrun/knn  [clrun.plugins.callbacks.components (cl-run 0.1.0)]"
    assert "  train: dataset entry  (required)" in out
    assert "  k: int  (default 20)  an integer >= 1 (Wu et al. and DINO use 20 or 200)" in out  # its clrun.Range
    assert any("neighbour bank" in line for line in out)  # the docstring
    assert main(["--no-plugins", "components", "projector", "clrun/mlp"]) == 0
    assert "supplied by cl-run: in_dim" in capsys.readouterr().out


def test_a_closed_pipe_is_not_a_traceback():
    import subprocess

    done = subprocess.run(f"{sys.executable} -m clrun --no-plugins components | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("dataset") and done.stderr == ""
