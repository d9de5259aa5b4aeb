from navitrain.cli import main

main()
