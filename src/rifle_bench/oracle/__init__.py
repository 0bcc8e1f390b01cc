"""The MLP-oracle study of the RIFLE paper (Sec. 4.6.2): does RIFLE move the first layer closer to the oracle's?

config      the structured config (Hydra ConfigStore) and its range checks
experiment  oracles, data, source pre-training, fine-tuning per method, test MSE and OT distance of one seed
report      the table (Markdown, CSV, LaTeX) and figure (PNG, PDF) of a sweep directory
cli         the `rifle-bench-oracle` Hydra app and the `rifle-bench-oracle-report` command
"""
