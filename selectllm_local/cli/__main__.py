from selectllm_local.cli import main

main()
