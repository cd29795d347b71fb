"""Run by tests/test_training.py in its own process: 2 logical CPU devices must be set up before
TensorFlow initialises. Prints JSON: the evaluation loss of one ring batch on 1 and on 2 replicas
(same weights), and a finite training loss on 2 replicas."""
import json
import sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from flame.io import load_flame  # noqa: E402
from ringnet_tf.data.rings import RingConfig, ring_dataset  # noqa: E402
from ringnet_tf.model import ModelConfig, build_ringnet  # noqa: E402
from ringnet_tf.trainer import RingNetTrainer  # noqa: E402

root = Path(sys.argv[1])
flame = load_flame(root / "flame")
model_cfg = ModelConfig(image_size=32, backbone="tiny", num_shape=10, num_expression=5, dropout=0.0)
rings = RingConfig(ring_size=4, rings_per_batch=4, image_size=32, seed=2)
batch = next(iter(ring_dataset(root / "data", rings).take(1)))
ds = tf.data.Dataset.from_tensors(batch).repeat()
keras.utils.set_random_seed(0)
weights = build_ringnet(flame, model_cfg).get_weights()
result = {"replicas": []}
for n, strategy in ((1, tf.distribute.get_strategy()),
                    (2, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        net = build_ringnet(flame, model_cfg)
        net.set_weights(weights)
        trainer = RingNetTrainer(net)
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    result["replicas"].append(strategy.num_replicas_in_sync)
    result[f"loss_{n}"] = trainer.evaluate(ds, steps=1, verbose=0, return_dict=True)["loss"]
    if n == 2:
        history = trainer.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
        result["train_loss_2"] = history.history["loss"][-1]
print(json.dumps(result))
