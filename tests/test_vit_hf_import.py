"""HF transformers ViT saves load into our tree and give HF's own outputs (HF's torch forward
pass is the reference), wherever an `.npz` is taken: inference, predict, fine-tuning."""

import json
import os

import numpy as np
import pytest

from vision_core.data import preprocess as pp_lib
from vision_core.errors import UserInputError
from vit_jax import checkpoint, hf_import

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def save_hf(directory, *, kind='classification', safe=True, **overrides):
  """A random HF ViT (32 px, 8 px patches, width 32, 2 layers) saved by HF; returns it in
  eval mode. Norms and biases are random too (HF starts them at one and zero)."""
  fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=48, image_size=32, patch_size=8, num_labels=5,
                id2label={i: f'class {i}' for i in range(5)},
                label2id={f'class {i}': i for i in range(5)})
  fields.update(overrides)
  config = transformers.ViTConfig(**fields)
  torch.manual_seed(0)
  if kind == 'classification':
    model = transformers.ViTForImageClassification(config)
  else:
    model = transformers.ViTModel(config, add_pooling_layer=kind == 'pooled')
  model.eval()
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.add_(torch.randn_like(p) * 0.2)
  model.save_pretrained(directory, safe_serialization=safe)
  return model


def hf_outputs(model, images):
  """HF's logits (or pooler output) for `images [B, H, W, 3]` already in HF's input scale."""
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
  return (out.logits if hasattr(out, 'logits') else out.pooler_output).numpy()


def ours(loaded, images):
  return np.asarray(loaded.model.apply({'params': loaded.params}, images))


def random_images(n=3, size=32):
  return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize('overrides,safe', [
    ({}, True),  # Google's releases: exact GELU, q/k/v biases
    ({'hidden_act': 'gelu_pytorch_tanh', 'qkv_bias': False}, True),
    ({}, False),  # pytorch_model.bin of older saves (read with weights_only=True)
])
def test_classifier_logits_match_hf(tmp_path, overrides, safe):
  model = save_hf(tmp_path, safe=safe, **overrides)
  assert os.listdir(tmp_path) and hf_import.is_hf_save(tmp_path)
  loaded = checkpoint.load_for_inference(str(tmp_path))
  assert loaded.class_names == [f'class {i}' for i in range(5)]
  assert (loaded.resolution, loaded.resolution_from) == (32, 'config.json')
  assert loaded.config.gelu_approximate == (overrides.get('hidden_act') == 'gelu_pytorch_tanh')
  images = random_images()
  expected = hf_outputs(model, images)  # mean = std = 0.5: HF's input is ours, [-1, 1]
  # (HF's LayerNorm epsilon is 1e-12, ours 1e-6: the only difference in the forward pass.)
  np.testing.assert_allclose(ours(loaded, images), expected, atol=1e-4 * np.abs(expected).max())
  # The weights file itself loads the same (config.json beside it).
  weights = next(p for p in os.listdir(tmp_path) if p.endswith(('.safetensors', '.bin')))
  again = checkpoint.load(str(tmp_path / weights))
  np.testing.assert_array_equal(again['head']['kernel'], loaded.params['head']['kernel'])


def test_sharded_save_loads(tmp_path):
  model = save_hf(tmp_path, safe=True)
  model.save_pretrained(tmp_path / 'sharded', max_shard_size='20KB')
  assert any(p.endswith('.index.json') for p in os.listdir(tmp_path / 'sharded'))
  whole, sharded = (checkpoint.load(str(p)) for p in (tmp_path, tmp_path / 'sharded'))
  np.testing.assert_array_equal(whole['Transformer']['encoderblock_1']['MlpBlock_0']['Dense_1']
                                ['kernel'], sharded['Transformer']['encoderblock_1']
                                ['MlpBlock_0']['Dense_1']['kernel'])


def test_imagenet_normalisation_is_folded_and_pooler_is_pre_logits(tmp_path):
  """A DeiT-style processor (ImageNet mean / std) and a ViTModel with its pooler: our model on
  predict's own preprocessing of a real photo gives HF's pooler output on HF's processor's."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  model = save_hf(tmp_path, kind='pooled')
  processor = transformers.ViTImageProcessorPil(size={'height': 32, 'width': 32},
                                                image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
  processor.save_pretrained(tmp_path)
  loaded = checkpoint.load_for_inference(str(tmp_path), head=False)
  assert loaded.config.representation_size == 32 and loaded.class_names is None
  photo = skimage.data.astronaut()
  pixels = processor(images=Image.fromarray(photo), return_tensors='np')['pixel_values']
  expected = hf_outputs(model, pixels.transpose(0, 2, 3, 1))
  ours_in = pp_lib.parse('to_rgb|resize(32)|value_range(-1, 1)')({'image': photo})['image']
  np.testing.assert_allclose(ours(loaded, ours_in[None]), expected, atol=1e-4)
  # Without the fold (the mean / std of Google's releases) the features would differ.
  os.remove(tmp_path / 'preprocessor_config.json')
  unfolded = checkpoint.load_for_inference(str(tmp_path), head=False)
  assert np.abs(ours(unfolded, ours_in[None]) - expected).max() > 1e-2


def test_fold_input_affine_is_the_same_linear_map():
  rng = np.random.default_rng(1)
  embedding = {'kernel': rng.normal(size=(4, 4, 3, 6)), 'bias': rng.normal(size=6)}
  scale, shift = np.array([2.0, 0.5, 3.0]), np.array([-1.0, 0.25, 0.0])
  folded = hf_import.fold_input_affine(embedding, scale, shift)
  patch = rng.uniform(-1, 1, (4, 4, 3))
  direct = np.einsum('ijc,ijcd->d', scale * patch + shift, embedding['kernel']) + embedding['bias']
  np.testing.assert_allclose(np.einsum('ijc,ijcd->d', patch, folded['kernel'])
                             + folded['bias'], direct, rtol=1e-5, atol=1e-5)


def test_predict_cli_names_hf_classes(tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  model = save_hf(tmp_path / 'hf')
  image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  Image.fromarray(image).save(tmp_path / 'x.png')
  predict.main(['--checkpoint', str(tmp_path / 'hf'), '--top', '2', str(tmp_path / 'x.png')])
  table = capsys.readouterr().out.splitlines()
  logits = hf_outputs(model, image[None].astype(np.float32) / 127.5 - 1)[0]
  best = np.argsort(-logits)[:2]
  assert [line.split()[1:3] for line in table[1:]] == [['class', str(i)] for i in best]


def test_fine_tuning_starts_from_an_hf_save(tmp_path):
  """`pretrained=FOLDER` for the zoo's 'testing' model (width 10, one layer, 16 px patches):
  HF's weights, a fresh zero head, the position embeddings resized for 48 px."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  save_hf(tmp_path, hidden_size=10, num_hidden_layers=1, num_attention_heads=2,
          intermediate_size=10, patch_size=16, image_size=32)
  config = models.get_model_config('testing')
  model = models_vit.VisionTransformer(num_classes=7, **config)
  # As vit_jax.train_loop passes them: zeros in a fresh model's shapes (of the values, only
  # the head's are kept; an init op by op compiled each of its ops alone).
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             np.zeros((1, 48, 48, 3), np.float32))['params'])
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  checkpoint.check_exists(str(tmp_path), label='pretrained')
  params = checkpoint.load_pretrained(pretrained_path=str(tmp_path), init_params=init,
                                      model_config=config)
  hf = hf_import.load(str(tmp_path)).params
  np.testing.assert_array_equal(params['head']['kernel'], init['head']['kernel'])
  np.testing.assert_array_equal(params['Transformer']['encoderblock_0']['LayerNorm_1']['scale'],
                                hf['Transformer']['encoderblock_0']['LayerNorm_1']['scale'])
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 10, 10)  # class token + 3x3 patches at 48 px
  np.testing.assert_array_equal(posemb[:, :1], hf['Transformer']['posembed_input']
                                ['pos_embedding'][:, :1])


def _edit_config(directory, **changes):
  path = os.path.join(directory, 'config.json')
  with open(path, encoding='utf-8') as f:
    config = json.load(f)
  config.update(changes)
  config = {k: v for k, v in config.items() if v is not None}  # None: the field removed
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(config, f)


@pytest.mark.parametrize('changes,message', [
    ({'model_type': 'swin'}, "model_type 'swin'; this reads HF ViT saves"),
    ({'hidden_act': 'relu'}, "hidden_act 'relu'; the ViT here computes one of gelu"),
    ({'hidden_size': 64}, 'does not describe the weights in .*: hidden_size=64 but the weights '
                          'are 32 wide'),
    ({'num_hidden_layers': 3}, 'num_hidden_layers=3 but the weights hold 2 layers'),
    ({'num_attention_heads': 5}, 'expected widths divisible by num_attention_heads=5'),
    ({'num_attention_heads': '4'}, "num_attention_heads must be a positive integer, found '4'"),
    ({'id2label': {'0': 'a'}}, 'id2label must name classes 0..4 .* found 1 entries'),
    ({'image_size': [32, 48]}, r'image_size \[32, 48\]; expected one positive whole number'),
    ({'model_type': None, 'architecture': 'vit_base_patch16_224'},
     "a timm save \\(architecture 'vit_base_patch16_224'\\); timm's layout is not read here"),
])
def test_config_that_does_not_fit_is_named(tmp_path, changes, message):
  save_hf(tmp_path)
  _edit_config(tmp_path, **changes)
  with pytest.raises(UserInputError, match=message):
    checkpoint.load_for_inference(str(tmp_path))


def test_broken_saves_are_named(tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  save_hf(tmp_path)
  weights = tmp_path / 'model.safetensors'
  state = load_file(weights)
  save_file({**state, 'vit.extra.weight': np.zeros(3, np.float32)}, weights)
  with pytest.raises(UserInputError, match=r'1 problems\):\n  extra    vit.extra.weight'):
    checkpoint.load(str(tmp_path))
  dropped = ('vit.embeddings.cls_token', 'vit.encoder.layer.1.intermediate.dense.weight')
  save_file({k: v for k, v in state.items() if k not in dropped}, weights)
  with pytest.raises(UserInputError, match='not a complete HF ViT save; missing '
                     'embeddings.cls_token, encoder.layer.1.intermediate.dense.weight.$'):
    checkpoint.load(str(tmp_path))
  save_file({k: v for k, v in state.items() if not k.startswith('vit.encoder.layer.0.')},
            weights)
  with pytest.raises(UserInputError, match=r'missing encoder layers between 0 and 1 \(found '
                     r'\[1\]\)'):
    checkpoint.load(str(tmp_path))
  save_file({'cls_token': state['vit.embeddings.cls_token'],
             'blocks.0.attn.qkv.weight': np.zeros((96, 32), np.float32)}, weights)
  with pytest.raises(UserInputError, match=r'timm tensor names .* not read here'):
    checkpoint.load(str(tmp_path))
  weights.write_bytes(b'not a safetensors file')
  with pytest.raises(UserInputError, match='model.safetensors: not a readable safetensors'):
    checkpoint.load(str(tmp_path))
  os.remove(tmp_path / 'config.json')
  with pytest.raises(UserInputError, match='no config.json beside it'):
    checkpoint.load(str(weights))
  (tmp_path / 'preprocessor_config.json').write_text('{"image_std": [0.5, 0, 0.5]}')
  save_hf(tmp_path)
  with pytest.raises(UserInputError, match='preprocessor_config.json: .* std nonzero'):
    checkpoint.load(str(tmp_path))


def test_assess_scores_with_hf_logits(tmp_path):
  """`vit_jax.assess --checkpoint HF_FOLDER`: the report's ViT-Score is the top-3 overlap of
  HF's own logits for the two images (ImageNet mean / std, folded)."""
  import csv  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vit_jax import assess  # pylint: disable=g-import-not-at-top
  model = save_hf(tmp_path / 'hf', num_labels=12, id2label={i: f'c{i}' for i in range(12)},
                  label2id={f'c{i}': i for i in range(12)})
  transformers.ViTImageProcessorPil(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD) \
      .save_pretrained(tmp_path / 'hf')
  photo = skimage.data.astronaut()
  pairs = [(photo[:32, 100:132], photo[:32, 108:140]), (photo[200:232, 200:232],
                                                       photo[300:332, 300:332])]
  for folder, index in (('o', 0), ('r', 1)):
    (tmp_path / folder).mkdir()
    for i, pair in enumerate(pairs):
      Image.fromarray(pair[index]).save(tmp_path / folder / f'{i}.png')
  assess.main(['--originals', str(tmp_path / 'o'), '--reconstructions', str(tmp_path / 'r'),
               '--checkpoint', str(tmp_path / 'hf'), '--out', str(tmp_path / 'out'), '--k', '3'])
  rows = list(csv.DictReader(open(tmp_path / 'out' / 'report.csv', encoding='utf-8')))
  normalise = lambda x: (x / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
  for row, (a, b) in zip(sorted(rows, key=lambda r: r['image']), pairs):
    top_a, top_b = (set(np.argsort(-hf_outputs(model, normalise(x[None].astype(np.float32)))[0])
                        [:3]) for x in (a, b))
    assert float(row['vit_score']) == pytest.approx(len(top_a & top_b) / 3)
  assert 'hf:hf' in (tmp_path / 'out' / 'report.md').read_text()


def test_the_study_takes_an_hf_folder_as_its_vit(tmp_path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  from gan_jax import study, study_scores  # pylint: disable=g-import-not-at-top
  save_hf(tmp_path / 'hf')
  spec = importlib.util.spec_from_file_location('study_config', study.default_config_path())
  config_module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(config_module)
  config = config_module.get_config()
  config.vit_checkpoint = str(tmp_path / 'hf')
  assert study._resolve_paths(config)[1] == str(tmp_path / 'hf')  # pylint: disable=protected-access
  classifier = study_scores.load_classifier(str(tmp_path / 'hf'))
  assert (classifier.resolution, classifier.class_names[4]) == (32, 'class 4')
  config.vit_checkpoint = str(tmp_path)  # a folder without a save: still refused by name
  with pytest.raises(UserInputError, match='vit_checkpoint: .* is a folder; expected an .npz '
                                           'file or an HF ViT save_pretrained folder'):
    study._resolve_paths(config)  # pylint: disable=protected-access
  # A missing weights file is named by the field (the name alone once passed for a save).
  config.vit_checkpoint = str(tmp_path / 'nope.safetensors')
  with pytest.raises(UserInputError, match='vit_checkpoint: .*nope.safetensors does not exist'):
    study._resolve_paths(config)  # pylint: disable=protected-access
  with pytest.raises(UserInputError, match='vit_checkpoint: .*nope.safetensors does not exist'):
    study_scores.load_classifier(config.vit_checkpoint)


def test_gan_fid_features_of_an_hf_folder(tmp_path):
  """`config.fid_vit_checkpoint=FOLDER`: the features are HF's class token after its final
  LayerNorm (what its classifier reads); the cache key covers the processor's mean / std."""
  from gan_jax import fid_vit  # pylint: disable=g-import-not-at-top
  model = save_hf(tmp_path)
  transformers.ViTImageProcessorPil(image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD) \
      .save_pretrained(tmp_path)
  images = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  vit_fid = fid_vit.VitFid(str(tmp_path), batch_size=8)
  normalised = (images / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
  with torch.no_grad():
    expected = model.vit(pixel_values=torch.from_numpy(
        normalised.transpose(0, 3, 1, 2).astype(np.float32))).last_hidden_state[:, 0].numpy()
  np.testing.assert_allclose(vit_fid.features(images, pad_to=8), expected, atol=1e-4)
  key = fid_vit.checkpoint_sha256(str(tmp_path))
  transformers.ViTImageProcessorPil().save_pretrained(tmp_path)  # mean = std = 0.5
  assert fid_vit.checkpoint_sha256(str(tmp_path)) != key


def test_predict_prepares_images_as_the_saves_processor(tmp_path, capsys):
  """A DeiT-style processor (bicubic resize to 40x40, centre crop to 32): predict's
  probabilities for a non-square photo are HF's on its processor's output."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  model = save_hf(tmp_path / 'hf')
  processor = transformers.DeiTImageProcessorPil(
      size={'height': 40, 'width': 40}, crop_size={'height': 32, 'width': 32},
      image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
  processor.save_pretrained(tmp_path / 'hf')
  assert hf_import.test_ops(tmp_path / 'hf', 32) == (
      "to_rgb|resize((40, 40), method='bicubic')|central_crop((32, 32))|value_range(-1, 1)")
  photo = skimage.data.coffee()  # 400x600
  Image.fromarray(photo).save(tmp_path / 'coffee.png')
  pixels = processor(images=Image.fromarray(photo), return_tensors='np')['pixel_values']
  hf_probs = torch.softmax(torch.from_numpy(hf_outputs(model, pixels.transpose(0, 2, 3, 1))),
                           -1)[0].numpy()
  predict.main(['--checkpoint', str(tmp_path / 'hf'), '--top', '5', '--csv',
                str(tmp_path / 'p.csv'), str(tmp_path / 'coffee.png')])
  capsys.readouterr()
  rows = (tmp_path / 'p.csv').read_text().splitlines()[1:]
  ours = {int(r.split(',')[2]): float(r.split(',')[4]) for r in rows}
  np.testing.assert_allclose([ours[i] for i in range(5)], hf_probs, atol=2e-6)
  # A processor whose images do not fit the model is named.
  processor.crop_size = {'height': 48, 'width': 48}
  processor.save_pretrained(tmp_path / 'hf')
  with pytest.raises(UserInputError, match=r'preprocessor_config.json: its images are 48x48 '
                     'pixels, but the model takes 32x32'):
    hf_import.test_ops(tmp_path / 'hf', 32)


def test_a_bfloat16_save_loads_in_a_fresh_process(tmp_path):
  """safetensors reads bfloat16 into numpy only once ml_dtypes is imported (jax does, but
  the reader runs before jax is imported in a fresh process)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  model = save_hf(tmp_path)
  model.to(torch.bfloat16).save_pretrained(tmp_path / 'bf16')
  code = ('import sys; from vision_core import hf_io; '
          'state = hf_io.read_weights(hf_io.weights_file(sys.argv[1])); '
          'print(sorted({str(v.dtype) for v in state.values()}), "jax" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'bf16')], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "['bfloat16'] False"
  params = hf_import.load(tmp_path / 'bf16').params
  expected = model.classifier.weight.detach().float().numpy().T  # (bfloat16 values, exact)
  np.testing.assert_array_equal(params['head']['kernel'], expected)
