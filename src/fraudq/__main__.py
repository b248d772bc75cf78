from fraudq.cli import main

main()
