from algoforge_jax.cli import main

raise SystemExit(main())
