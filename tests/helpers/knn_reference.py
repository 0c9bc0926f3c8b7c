"""``clrun/knn``'s search as it was before the bank was chunked: the reference the chunked search must equal
(tests/unit/plugins/callbacks/test_knn.py) and the "before" side of bench/eval_memory.py."""

import torch
import torch.nn.functional as F


def whole_matrix_knn(train_x, train_y, test_x, num_classes, k=20, temperature=0.07, chunk=1024):
    """``knn_predict`` as it was before the bank was chunked (cl-run 0.x): the normalized bank in fp32 whole,
    each query chunk's similarities to all of it at once."""
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(k, train_x.shape[0])
    predictions = []
    for start in range(0, test_x.shape[0], chunk):
        sims = test_x[start:start + chunk] @ train_x.T
        top_sims, top_idx = sims.topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes)
        votes.scatter_add_(1, train_y[top_idx], (top_sims / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)
