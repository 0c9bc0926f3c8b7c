"""A step's batch in parts, for a batch larger than the activation memory holds: accumulation (one backward
per micro-batch, for losses that are a mean of per-image terms) and gradient caching (the loss on the whole
batch, the network's graph one chunk at a time, for any loss)."""
