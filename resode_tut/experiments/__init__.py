"""The chapters' experiments: sweeps, training runs, plots and command lines.

One module per chapter, imported by the chapter as ``ex``
(``from resode_tut.experiments import ch03 as ex``), plus the helpers that several
chapters share.  Nothing here is part of the library's API (:mod:`resode_tut`), and
the library never imports from here.

=====================  ==========================================================
module                 used by
=====================  ==========================================================
``ch01``               chapter 1, ResNets are Euler steps
``ch02``               chapter 2, implicit regularisation (linear ResNets)
``ch03``               chapter 3, the memory-free adjoint; benchmark command line
``ch04``               chapter 4, Heun residual networks; Fig. 4 on CIFAR-10 (command line)
``heun_cifar``         chapter 4's Fig. 4 run (the code its shipped result is keyed on)
``ch05``               chapter 5, solver dependence (presentation)
``solver_dependence``  chapter 5's computations (the code Table 1 is keyed on)
``table1``             chapter 5's Table 1: shipped result and command line
``ch05_runs``          chapter 5's full-mode model runs: shipped results, command line
``ch06``               chapter 6, fine-tuning on CIFAR-10: results, figures, command line
``finetune``           chapter 6's run (the code its result is keyed on)
``finetune_result``    chapter 6's result and its JSON form
``table2``             chapter 6's Table 2 run (the code its shipped result is keyed on)
``ch06_table2``        chapter 6's Table 2: shipped result, figure, command line
``agreement``          chapters 6 and 7 (adjoint gradients against backprop's: a record)
``ch07``               chapter 7, scaling up: the data-parallel, resume and autocast checks
``ch08``               chapter 8, memory-free training compared: results, figures, command line
``memory_benchmark``   chapter 8's benchmark (the code its shipped result is keyed on)
``discretisation``     chapters 1 and 4 (distance to the ODE against depth)
``gradient_methods``   chapters 3, 4 and 6 (four ways to differentiate a stack)
``classifier``         chapters 3 and 4 (a small residual classifier)
``cifar_training``     chapters 6 and 7 (CIFAR training and measurements)
``history``            chapters 3, 4 and 6 (a training run's per-epoch record)
``plots``              chapters 1-4
``cache``              chapters 5 and 6 (what a stored result depends on)
``shipped``            chapters 5 and 6 (results shipped under results/, with provenance)
``chunks``             chapters 4-6, 8 (a long run in resumable chunks)
``cli``                chapters 3 and 6 (argument types of the command lines)
=====================  ==========================================================
"""
