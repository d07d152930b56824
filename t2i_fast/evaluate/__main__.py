import sys

from t2i_fast.evaluate.cli import main

sys.exit(main())
