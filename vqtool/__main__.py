from vqtool.cli import main

main()
