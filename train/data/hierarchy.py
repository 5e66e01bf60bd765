"""Coarse groupings (superclasses) for the datasets that have one.

CIFAR-100 brings its own 20 superclasses in its files; Fashion-MNIST has none officially, so we use
the widely used six-group split (tops, bottoms, dresses, outerwear, bags, shoes).
"""
import numpy as np

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_COARSE_NAMES = ["tops", "bottoms", "dresses", "outerwear", "bags", "shoes"]
# fine class -> coarse group: tops {0, 2, 6}, bottoms {1}, dresses {3}, outerwear {4}, bags {8},
# shoes {5, 7, 9}
FASHION_MNIST_COARSE = np.array([0, 1, 0, 2, 3, 5, 0, 5, 4, 5], dtype=np.int64)

MNIST_CLASSES = [str(d) for d in range(10)]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
