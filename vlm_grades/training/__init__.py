"""One training run, read top-down: run.py opens the run folder and ends the run (final model, held-out
score); loop.py is the optimizer step, in the order docs/DESIGN states; stopping.py holds the policies that
decide the end (GradES, classic validation-loss stopping, none); data.py, sampler.py, optim.py and schedule.py
feed the loop; checkpoint.py, resume.py, divergence.py and run_folder.py keep its work safe on disk."""
