"""Write the example notebooks from the cells below, without outputs (scripts/run_notebooks.py runs them).

    .venv/bin/python scripts/make_notebooks.py [tutorial.ipynb] [tutorial.zh-CN.ipynb]   (default: both)
"""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent

TUTORIAL = [
    new_markdown_cell(
        "# The tf.keras batch-normalization tutorial, with fashionlab\n\n"
        "**English** · [简体中文](tutorial.zh-CN.ipynb)\n\n"
        "The tutorial *tf.keras 搭建神经网络分类模型 (三)* step by step: Fashion-MNIST, 5,000 training images held out "
        "for validation, pixels standardized, a 20-layer `Dense(100, relu)` + `BatchNormalization` network trained "
        "with SGD for 10 epochs, learning curves, evaluation and predictions. Then one step past it: a small CNN, "
        "and a comparison over seeds.\n\n"
        "Each `fashionlab` call writes a run directory (config, history, model, report) and returns an object that "
        "shows itself here."),
    new_code_cell(
        "import os\n\n"
        "# CI runs this notebook with FASHIONLAB_QUICK=1: one epoch on 2,000 training images per run.\n"
        "QUICK = os.environ.get(\"FASHIONLAB_QUICK\") == \"1\"\n"
        "SHORT = {\"epochs\": 1, \"train_samples\": 2000} if QUICK else {}"),
    new_code_cell(
        "%matplotlib inline\n"
        "import sys\n\n"
        "import fashionlab as fl  # first: it makes JAX Keras' backend, unless KERAS_BACKEND says otherwise\n"
        "import jax\n"
        "import keras\n"
        "import matplotlib\n"
        "import numpy as np\n"
        "import pandas as pd\n\n"
        "print(sys.version_info)\n"
        "for module in (fl, keras, jax, np, pd, matplotlib):\n"
        "    print(module.__name__, module.__version__)\n"
        "print(\"backend:\", keras.backend.backend())"),
    new_markdown_cell("## The data: 55,000 training, 5,000 validation and 10,000 test images"),
    new_code_cell(
        "from fashionlab.data import DataSource\n\n"
        "splits = DataSource().splits(validation_size=5000)\n"
        "print(splits.x_valid.shape, splits.y_valid.shape)\n"
        "print(splits.x_train.shape, splits.y_train.shape)\n"
        "print(splits.x_test.shape, splits.y_test.shape)"),
    new_markdown_cell(
        "## Standardized pixels\n\n"
        "One mean and one standard deviation over all training pixels, as the tutorial's `StandardScaler` on "
        "`x.reshape(-1, 1)`: the largest and smallest scaled values are those it prints."),
    new_code_cell(
        "from fashionlab.preprocessing import fit_scaler\n\n"
        "scaler = fit_scaler(splits.x_train)\n"
        "x_train_scaled = scaler.transform(splits.x_train)\n"
        "print(np.max(x_train_scaled), np.min(x_train_scaled))"),
    new_markdown_cell("## The network: 20 × Dense(100, relu) + BatchNormalization"),
    new_code_cell(
        "from fashionlab.config import TrainConfig\n"
        "from fashionlab.model import build_model\n\n"
        "build_model(TrainConfig(), scaler).summary()"),
    new_markdown_cell(
        "## Training: SGD, learning rate 0.01, batch 32, 10 epochs\n\n"
        "`fl.train()` trains the tutorial's recipe; any config key can be changed (`fl.train(epochs=20)`). The "
        "progress is one bar per epoch; the result is a card with the learning curves."),
    new_code_cell("run = fl.train(**SHORT)\nrun"),
    new_code_cell("run.history.round(4)"),
    new_markdown_cell("## Evaluation on the test set"),
    new_code_cell(
        "print(f\"test accuracy {run.metrics['test_accuracy']:.4f}, test loss {run.metrics['test_loss']:.4f}\")\n"
        "run.confusion()"),
    new_code_cell("run.mistakes(12)"),
    new_markdown_cell("## Predictions: the tutorial's three test images"),
    new_code_cell("run.predict([0, 1, 2])"),
    new_markdown_cell(
        "## One step past the tutorial\n\n"
        "The `fast-cnn` recipe: two convolution blocks (32 and 64 filters, batch normalization, dropout), AdamW "
        "with a one-cycle schedule, 5 epochs; about 92 % on the test set in under three minutes on a 2-core CPU "
        "(`fashionlab recipes` lists the others)."),
    new_code_cell("cnn = fl.train(\"fast-cnn\", **SHORT)\ncnn"),
    new_markdown_cell(
        "## Comparing techniques, honestly: several seeds\n\n"
        "One run says little: `fl.compare` trains each variant with several seeds and tells the difference from "
        "the spread. Here the tutorial's network with batch normalization after the activation (as written), before "
        "it, and without it."),
    new_code_cell(
        "comparison = fl.compare([\"bn-after\", \"bn-before\", \"scaled\"], seeds=2, out=\"runs/notebook-bn\", "
        "**SHORT)\ncomparison"),
    new_code_cell("comparison.table.round(4)"),
]


# The same tutorial in its own language: the sections of "tf.keras 搭建神经网络分类模型 (三)", each run with
# fashionlab, with the English notebook's quick setting (tests/test_notebooks.py runs both).
TUTORIAL_ZH = [
    new_markdown_cell(
        "# (批归一化) tf.keras 搭建神经网络分类模型 (三)：用 fashionlab 实现\n\n"
        "[English](tutorial.ipynb) · **简体中文**\n\n"
        "本笔记本按原教程的章节逐步用 fashionlab 复现：Fashion-MNIST 数据集，前 5,000 张训练图像留作验证集，"
        "像素做数据归一化（StandardScaler），搭建 20 层 `Dense(100, relu)` + `BatchNormalization`（批归一化）的 "
        "model，用 SGD 训练 10 个 epoch，画出学习曲线，在测试集上评估，最后预测三张测试图像。\n\n"
        "每次调用 `fashionlab` 都会写出一个运行目录（配置、训练历史、model、报告），"
        "并返回一个能在笔记本里直接显示的对象。"),
    new_code_cell(
        "import os\n\n"
        "# 测试（CI）以 FASHIONLAB_QUICK=1 运行本笔记本：每次训练只用 2,000 张训练图像、1 个 epoch。\n"
        "QUICK = os.environ.get(\"FASHIONLAB_QUICK\") == \"1\"\n"
        "SHORT = {\"epochs\": 1, \"train_samples\": 2000} if QUICK else {}"),
    new_markdown_cell("## 1 导入库\n\n打印库的版本号。原教程用 TensorFlow 2.3；这里是 Keras 3，后端为 JAX。"),
    new_code_cell(
        "%matplotlib inline\n"
        "import sys\n\n"
        "import fashionlab as fl  # 先导入：除非 KERAS_BACKEND 另有指定，它让 Keras 使用 JAX 后端\n"
        "import jax\n"
        "import keras\n"
        "import matplotlib\n"
        "import numpy as np\n"
        "import pandas as pd\n\n"
        "# 打印库的版本号\n"
        "print(sys.version_info)\n"
        "for module in (fl, keras, jax, np, pd, matplotlib):\n"
        "    print(module.__name__, module.__version__)\n"
        "print(\"backend:\", keras.backend.backend())"),
    new_markdown_cell(
        "## 2 加载 Fashion-MNIST 数据集\n\n"
        "### 2.1 加载数据集\n\n"
        "与原教程相同的划分：60,000 张训练图像中前 5,000 张作验证集，其余 55,000 张作训练集，另有 10,000 张测试集。"
        "fashionlab 离线读取官方文件，并用 SHA-256 校验每个文件。"),
    new_code_cell(
        "from fashionlab.data import DataSource\n\n"
        "splits = DataSource().splits(validation_size=5000)\n"
        "x_valid, y_valid = splits.x_valid, splits.y_valid\n"
        "x_train, y_train = splits.x_train, splits.y_train\n"
        "x_test, y_test = splits.x_test, splits.y_test\n\n"
        "print(x_valid.shape, y_valid.shape)\n"
        "print(x_train.shape, y_train.shape)\n"
        "print(x_test.shape, y_test.shape)"),
    new_markdown_cell(
        "### 2.2 数据归一化\n\n"
        "x = (x - μ) / σ：与原教程的 `StandardScaler` 作用于 `x.reshape(-1, 1)` 相同，"
        "在全部训练像素上求一个均值和一个标准差。归一化前像素的范围是 0 到 255："),
    new_code_cell("print(np.max(x_train), np.min(x_train))"),
    new_code_cell(
        "from fashionlab.preprocessing import fit_scaler\n\n"
        "scaler = fit_scaler(x_train)\n"
        "x_train_scaled = scaler.transform(x_train)\n"
        "x_valid_scaled = scaler.transform(x_valid)\n"
        "x_test_scaled = scaler.transform(x_test)\n\n"
        "print(np.max(x_train_scaled), np.min(x_train_scaled))\n"
        "print(x_valid_scaled.shape, y_valid.shape)\n"
        "print(x_train_scaled.shape, y_train.shape)\n"
        "print(x_test_scaled.shape, y_test.shape)"),
    new_markdown_cell(
        "fashionlab 把这个 scaler 做成 model 的第一层（`Rescaling`，没有参数）：保存下来的 model 直接接收 0 到 255 的"
        "原始像素，不会配错 scaler。"),
    new_markdown_cell(
        "## 3 搭建 model（使用批归一化）\n\n"
        "### 3.1 model 结构搭建\n\n"
        "20 个隐藏层，每层 `Dense(100, activation=\"relu\")` 后接 `BatchNormalization`，输出层为 "
        "`Dense(10, activation=\"softmax\")`。原教程的第二种选择（在批归一化后再使用激活函数）是 "
        "`TrainConfig(batch_norm=\"before\")`。"),
    new_code_cell(
        "from fashionlab.config import TrainConfig\n"
        "from fashionlab.model import build_model\n\n"
        "model = build_model(TrainConfig(), scaler)"),
    new_markdown_cell(
        "### 3.2 编译 model\n\n"
        "`build_model` 已按原教程编译：损失为 `sparse_categorical_crossentropy`（标签是类别序号，不是 one-hot），"
        "优化器为 SGD（随机梯度下降，学习率 0.01），指标为 accuracy。"),
    new_code_cell(
        "print(model.loss, type(model.optimizer).__name__, round(float(model.optimizer.learning_rate), 6))"),
    new_markdown_cell(
        "### 3.3 查看 model 信息\n\n参数个数与原教程一致：共 279,410 个，其中可训练 275,410 个，不可训练 4,000 个。"),
    new_code_cell("model.summary()"),
    new_markdown_cell(
        "## 4 训练和评估 model\n\n"
        "### 4.1 训练（fit）\n\n"
        "`fl.train()` 按原教程的配方重新搭建上面的 model 并训练：SGD，学习率 0.01，batch 32，10 个 epoch，"
        "每个 epoch 后在验证集上评估。"
        "任何配置项都可以修改，例如 `fl.train(epochs=20)`。训练时每个 epoch 显示一行进度，"
        "结束后显示这次运行的卡片。"),
    new_code_cell("run = fl.train(**SHORT)\nrun"),
    new_code_cell("run.history.round(4)"),
    new_markdown_cell(
        "### 4.2 展示学习曲线\n\n"
        "原教程的 `plot_learning_curves(history)`，画的是这次运行的训练历史（`run.history`，每个 epoch 一行）："
        "四个指标画在一张图上，带网格，纵轴 0 到 1。"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n\n\n"
        "def plot_learning_curves(history):\n"
        "    history.plot(figsize=(8, 5))\n"
        "    plt.grid(True)\n"
        "    plt.gca().set_ylim(0, 1)\n"
        "    plt.show()\n\n\n"
        "plot_learning_curves(run.history.set_index(\"epoch\")[[\"loss\", \"accuracy\", \"val_loss\", "
        "\"val_accuracy\"]])"),
    new_markdown_cell(
        "fashionlab 自己的 `run.plot()` 把损失和准确率分开画（训练集和验证集），并标出验证准确率最高的 epoch；"
        "运行目录中的 `learning_curves.png` 就是这张图。"),
    new_code_cell("run.plot()"),
    new_markdown_cell("### 4.3 评估 model\n\n在 10,000 张测试图像上的损失和准确率，以及混淆矩阵（行为真实类别）。"),
    new_code_cell(
        "print(f\"test loss {run.metrics['test_loss']:.4f}, test accuracy {run.metrics['test_accuracy']:.4f}\")\n"
        "run.confusion()"),
    new_markdown_cell("model 最有把握却判断错的测试图像："),
    new_code_cell("run.mistakes(12)"),
    new_markdown_cell(
        "## 5 使用 model 预测数据\n\n"
        "原教程预测测试集的前三张图像（`x_test[:3]`），结果为 `[9 2 1]`："
        "`Ankle boot`、`Pullover`、`Trouser`。`run.predict` 给出每张图像的类别、概率和其次可能的类别。"),
    new_code_cell("run.predict([0, 1, 2])"),
    new_markdown_cell(
        "## 接下来\n\n"
        "- `fl.train(\"fast-cnn\")`：小型卷积网络，在 2 核 CPU 上约 3 分钟达到约 92 %"
        "（`fashionlab recipes` 列出全部配方）；\n"
        "- `fl.compare([\"bn-after\", \"bn-before\", \"scaled\"], seeds=3)`：用多个随机种子比较批归一化的效果；\n"
        "- 英文笔记本 [tutorial.ipynb](tutorial.ipynb) 演示了这两步。"),
]


def write(cells: list, name: str) -> None:
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    path = ROOT / "examples" / name
    nbformat.write(notebook, path)
    print(f"wrote {path}")


NOTEBOOKS = {"tutorial.ipynb": TUTORIAL, "tutorial.zh-CN.ipynb": TUTORIAL_ZH}


def main() -> None:
    names = sys.argv[1:] or list(NOTEBOOKS)
    unknown = [name for name in names if name not in NOTEBOOKS]
    if unknown:
        sys.exit(f"make_notebooks.py: no notebook named {unknown[0]}; choose from {', '.join(NOTEBOOKS)}")
    for name in names:
        write(NOTEBOOKS[name], name)


if __name__ == "__main__":
    main()
