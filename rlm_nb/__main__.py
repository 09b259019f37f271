"`python -m rlm_nb` is the `rlm-nb` command."
import sys
from rlm_nb.cli import main

sys.exit(main())
