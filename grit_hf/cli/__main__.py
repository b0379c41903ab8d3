from grit_hf.cli import main

raise SystemExit(main())
