"""Same as ``hat-train`` (for a source checkout without the console scripts installed).

python scripts/train.py model=tiny trainer.steps=50
"""

from hat.cli.train import main

if __name__ == "__main__":
    main()
