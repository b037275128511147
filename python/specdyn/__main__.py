"""``python -m specdyn`` is the ``specdyn`` command."""
from .cli import main

if __name__ == "__main__":
    main()
