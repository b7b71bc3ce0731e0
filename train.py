"""Train a LoRA adapter for an LLM recommender: ``python train.py --config configs/lastfm_train.yaml``."""

from lit_eraser.cli.train_cli import main

if __name__ == "__main__":
    main()
