from edgetune.tuners.dsee.config import DseeConfig
from edgetune.tuners.dsee.decompose import lowrank_sparse, sparse_support
from edgetune.tuners.dsee.prune import inference_flops, prune_attention_heads, prune_unstructured, weight_sparsity
from edgetune.tuners.dsee.sparse import SparseResidual
from edgetune.tuners.dsee.tuner import DseeTuner

__all__ = [
    "DseeConfig",
    "DseeTuner",
    "SparseResidual",
    "inference_flops",
    "lowrank_sparse",
    "prune_attention_heads",
    "prune_unstructured",
    "sparse_support",
    "weight_sparsity",
]
