from spinectl.main import main

main()
