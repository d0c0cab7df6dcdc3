"""Human-readable class names for the label sets our checkpoints predict."""

from __future__ import annotations

import functools
import importlib.resources

from vision_core.errors import UserInputError

CIFAR10 = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
           'truck')

CIFAR100 = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile
cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp
lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree
orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum
rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train
trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())


@functools.cache
def imagenet2012() -> tuple[str, ...]:
  """The 1,000 ILSVRC-2012 classes in label order (sorted WordNet ids), first lemma each."""
  return tuple(lemmas.split(',')[0] for _, lemmas in _imagenet_rows())


@functools.cache
def imagenet2012_synsets() -> tuple[str, ...]:
  """WordNet ids (`n01440764`, ...) in label order, as tfds `imagenet2012` numbers them."""
  return tuple(synset for synset, _ in _imagenet_rows())


def _imagenet_rows():
  text = (importlib.resources.files('vit_jax.data') / 'imagenet2012_classes.tsv').read_text()
  return [tuple(line.split('\t', 1)) for line in text.splitlines() if line]


def get(name: str) -> tuple[str, ...]:
  """Class names by dataset: 'imagenet2012', 'cifar10' or 'cifar100'."""
  table = {'imagenet2012': imagenet2012, 'cifar10': lambda: CIFAR10,
           'cifar100': lambda: CIFAR100}
  if name not in table:
    raise UserInputError(f'no class names for {name!r}; known: {", ".join(table)}.')
  return table[name]()
