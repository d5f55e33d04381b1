from ptq3d.harness.cli import main

raise SystemExit(main())
