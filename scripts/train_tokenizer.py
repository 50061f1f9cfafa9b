"""Same as ``hat-tokenizer`` (for a source checkout without the console scripts installed).

python scripts/train_tokenizer.py model=bpe_small output=tokenizer.model
"""

from hat.cli.train_tokenizer import main

if __name__ == "__main__":
    main()
