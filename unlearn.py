"""Unlearn requests from a LoRA adapter: ``python unlearn.py --config configs/lastfm_qm.yaml``."""

from lit_eraser.cli.unlearn_cli import main

if __name__ == "__main__":
    main()
