from workers.evaluation.report import main

main()
