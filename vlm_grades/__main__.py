import sys

from vlm_grades.cli import main

sys.exit(main())
