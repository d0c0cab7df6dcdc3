"""Writes the real TensorFlow checkpoint in this folder (run once, with tensorflow-cpu 2.21).

    python tests/data/igpt_tf/make_fixture.py tests/data/igpt_tf

A tiny Image GPT in OpenAI's TF1 variable layout (vocab 16, width 8, 2 heads, 2 layers,
n_ctx 4), saved by `tf.compat.v1.train.Saver(sharded=True)` over two CPU devices, so the
bundle has two data shards like the released 32/64-shard checkpoints. Adam slots and
`global_step` are written as well, as in the released files. Every value is
`fixture_value(name, shape)` below (the test recomputes it), so the reader is checked on
exact values of a file that TensorFlow itself wrote.
"""

import sys
import zlib

import numpy as np


def fixture_value(name, shape):
  seed = zlib.crc32(name.encode())
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def variable_shapes(vocab=16, d=8, heads=2, layers=2, n_ctx=4):
  shapes = {'model/wte': (vocab, d), 'model/wtet': (vocab, d), 'model/wpe': (n_ctx, d),
            'model/sos': (d,), 'model/ln_f/g': (d,)}
  for i in range(layers):
    p = f'model/h{i}/'
    shapes.update({p + 'ln_1/g': (d,), p + 'ln_2/g': (d,), p + 'mlp/c_fc/w': (d, 4 * d),
                   p + 'mlp/c_proj/w': (4 * d, d)})
    for n in ('q_proj', 'k_proj', 'v_proj', 'c_proj'):
      shapes[p + 'attn/' + n] = (heads, d // heads, d)
  return shapes


def main(out_dir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.compat.v1.disable_eager_execution()
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  variables = []
  for k, (name, shape) in enumerate(sorted(variable_shapes().items())):
    with tf.device(f'/cpu:{k % 2}'):
      value = fixture_value(name, shape)
      variables.append(tf.compat.v1.get_variable(name, initializer=value))
      for slot in ('Adam', 'Adam_1'):
        variables.append(tf.compat.v1.get_variable(
            f'{name}/{slot}', initializer=fixture_value(f'{name}/{slot}', shape)))
  with tf.device('/cpu:0'):
    variables.append(tf.compat.v1.get_variable(
        'global_step', initializer=np.int64(7), trainable=False))
  saver = tf.compat.v1.train.Saver(variables, sharded=True)
  with tf.compat.v1.Session() as sess:
    sess.run(tf.compat.v1.global_variables_initializer())
    saver.save(sess, f'{out_dir}/model.ckpt', global_step=7, write_meta_graph=False)


if __name__ == '__main__':
  main(sys.argv[1])
