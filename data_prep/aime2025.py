"""AIME 2025 (yentinglin/aime_2025: problem + answer; also opencompass/AIME2025 with
--config AIME2025-I or AIME2025-II: question + answer)
-> <out>/test.parquet (evaluation only: every upstream split is written to test)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.common import run_math_eval  # noqa: E402


def main(argv=None):
    return run_math_eval("aime2025", __doc__, "yentinglin/aime_2025",
                         question_keys=("problem", "question"), meta_keys=("id", "url", "year"), argv=argv)


if __name__ == "__main__":
    main()
