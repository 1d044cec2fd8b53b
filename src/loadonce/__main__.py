from loadonce.server.cli import main

main()
