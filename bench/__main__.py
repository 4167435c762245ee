from bench.tracker import main

main()
