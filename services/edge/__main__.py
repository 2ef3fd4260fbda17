from services.edge.server import main

main()
