"""`python -m bench [options]` runs the tracker benchmarks (bench/tracker.py);
`python -m bench analytics [options]` the analytics ones (bench/analytics.py)."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["analytics"]:
        from bench.analytics import main

        main(sys.argv[2:])
    else:
        from bench.tracker import main

        main()
