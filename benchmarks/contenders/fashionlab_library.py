"""fashionlab's library call: train(TrainConfig(), run_dir), the tutorial recipe.

    python benchmarks/contenders/fashionlab_library.py RUN_DIR
"""

import json
import sys
import time

from fashionlab.config import TrainConfig
from fashionlab.training import train

started = time.perf_counter()
result = train(TrainConfig(), sys.argv[1], verbose=0)
print("RESULT " + json.dumps({"epoch_seconds": result.metrics["seconds_per_epoch"],
                              "train_seconds": time.perf_counter() - started,
                              "test_accuracy": result.metrics["test_accuracy"]}))
