"""MATH-500 (HuggingFaceH4/MATH-500: problem, solution, answer, subject, level, unique_id)
-> <out>/test.parquet (evaluation only: every upstream split is written to test)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import run_math_eval  # noqa: E402


def main(argv=None):
    return run_math_eval("math500", __doc__, "HuggingFaceH4/MATH-500",
                         question_keys=("problem",), meta_keys=("subject", "level", "unique_id"), argv=argv)


if __name__ == "__main__":
    main()
