"""rifle-bench: reproduce RIFLE (ICML 2020) and the transfer-learning tricks it is compared with."""

__version__ = "0.1.0"
