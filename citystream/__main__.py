from citystream.cli import main

main()
