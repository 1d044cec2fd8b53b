from loadonce.server._cli import main

main()
