"""Train DiffMatch: ``python train.py fit --config configs/cpu_small.yaml`` (see README)."""

from diffmatch.cli.train import main

if __name__ == "__main__":
    main()
