"""What verify and eval judge with: KL statistics, paired tests, file and weight checks, dist integrity, the shared gate."""
