"""The world a run trains in: which rank this process is, how many there are, and the few
collectives the training loop calls. Here, the one-process world; dist.py has the MPI one
(MPIWorld), with the same members, made by dist.world() under mpirun.

A world hands each rank its share of a global batch (its rows, and their dropout masks) and
averages what the ranks computed. In one process every collective is the identity, so the loop
in train.py reads the same with one rank or many and never imports MPI.
"""


class Local:
    """One process, no MPI: rank 0 of 1, and every collective is the identity."""
    rank, size = 0, 1

    def mean(self, x):
        """The mean over ranks of a float."""
        return x

    def average(self, buf):
        """buf <- the mean over ranks of buf, in place."""

    def barrier(self):
        """Wait until every rank has come here."""

    def any(self, flag):
        """True on every rank when `flag` is true on any."""
        return bool(flag)

    def rows(self, batch_size):
        """The slice of a global batch's rows this rank trains on."""
        return slice(0, batch_size)

    def dropout_rng(self, rng):
        """The generator this rank's dropout masks come from, given the one-process one."""
        return rng


LOCAL = Local()
