from hms.cli import main

raise SystemExit(main())
