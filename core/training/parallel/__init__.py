"""Where and how the model runs: ``parallelize`` places a built model on its device in one visible order
(SyncBatchNorm, memory layout, compile, DDP or FSDP); ``sharding`` holds FSDP2's part; ``compat`` finds the
torch APIs that newer releases moved or renamed, or their older equivalents."""
