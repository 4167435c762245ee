"""`python -m bench [options]` runs the tracker benchmarks (bench/tracker.py);
`python -m bench analytics [options]` the analytics ones (bench/analytics.py);
`python -m bench compare [options]` Cairn against MLflow's tracking server (bench/compare.py)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        from bench.compare import main

        main(sys.argv[2:])
    elif sys.argv[1:2] == ["analytics"]:
        from bench.analytics import main

        main(sys.argv[2:])
    else:
        from bench.tracker import main

        main()
