from persona_export.cli import main

main()
