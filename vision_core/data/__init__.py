"""The shared input pipeline: sources -> preprocessing ops -> grain loaders.

- `sources`: `ImageFolderSource`, `TfdsSource`, `MnistIdxSource`, `ArraySource`, `get_source`,
  `align_classes`.
- `preprocess`: the op registry and `parse('inception_crop(224)|flip_lr|value_range(-1,1)')`.
- `loader`: `train_loader` (shuffled, resumable) and `eval_batches` (each example once, masked);
  the same global batches on any number of processes (`GlobalBatchSampler`).
"""

from vision_core.data.loader import (GlobalBatchSampler, eval_batches, num_eval_batches,
                                    per_host_batch_size, seek, train_loader)
from vision_core.data.preprocess import parse as parse_preprocess
from vision_core.data.sources import (ArraySource, ImageFolderSource, MnistIdxSource, TfdsSource,
                                      align_classes, cache_in_memory, get_source, mnist_paths)

__all__ = [
    'GlobalBatchSampler', 'eval_batches', 'num_eval_batches', 'per_host_batch_size', 'seek',
    'train_loader', 'parse_preprocess', 'ArraySource', 'ImageFolderSource', 'MnistIdxSource',
    'TfdsSource', 'align_classes', 'cache_in_memory', 'get_source', 'mnist_paths',
]
