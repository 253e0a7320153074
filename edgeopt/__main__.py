from edgeopt.cli.main import main

main()
