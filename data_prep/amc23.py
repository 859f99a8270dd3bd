"""AMC 2023 (math-ai/amc23: id, question, answer, url)
-> <out>/test.parquet (evaluation only: every upstream split is written to test)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import run_math_eval  # noqa: E402


def main(argv=None):
    return run_math_eval("amc23", __doc__, "math-ai/amc23",
                         question_keys=("question", "problem"), meta_keys=("id", "url"), argv=argv)


if __name__ == "__main__":
    main()
