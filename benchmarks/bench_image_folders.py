"""How fast a folder of pictures is read: CIFAR-10 written out as 60,000 PNG files.

1. One core's rate: `image_folders._decode_one` (read, digest, decode,
   prepare) on SAMPLE files, one after the other, in this process; and what
   the cores give together: one such process per core at the same time, each
   on its own SAMPLE files (on a VM whose virtual cores share physical ones
   this is less than one core's rate x cores, whatever the code).
2. Decoding: `image_folders.decode_all` with an empty cache, one worker
   process per core, writing the cache; its rate against (one core's rate x
   cores), one core's rate measured just before and just after it (the mean of
   the two: this VM's speed moves by up to 2x within a minute, so each repeat
   is its own ratio, and the report gives the median ratio). One core's rate
   twice: on the SAMPLE (small enough to stay in the CPU's caches, so it
   flatters one core), and `decode_all(workers=1)` on the whole folder, the
   same job on one core (its loop is `_decode_one` in this process). And the
   whole first start, `image_folders.load_folder` with an empty cache
   (listing, decoding, caching, the split), bracketed by the sample's rate.
3. The cached start: `load_folder` again; its time against the first's.

Each measured --repeats times (a fresh cache folder each first start); medians.

    python benchmarks/write_cifar10_folders.py /tmp/cifar10-png   # once, ~1 minute
    python benchmarks/bench_image_folders.py /tmp/cifar10-png
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import image_folders  # noqa: E402


def one_core_rate(paths, size):
    start = time.perf_counter()
    for path in paths:
        image_folders._decode_one(path, size, 'center')
    return len(paths) / (time.perf_counter() - start)


def all_cores_rate(folder, sample, size, cores):
    """Pictures per second of `cores` processes decoding one after the other
    at the same time, each its own `sample` files."""
    processes = [subprocess.Popen([sys.executable, __file__, folder, '--image-size', str(size),
                                   '--sample', str(sample), '--single', str(index), str(cores)],
                                  stdout=subprocess.PIPE, text=True) for index in range(cores)]
    return sum(float(process.communicate()[0].split()[-1]) for process in processes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('folder', help='CIFAR-10 as train/ and test/ PNG trees')
    parser.add_argument('--image-size', type=int, default=32)
    parser.add_argument('--sample', type=int, default=6000,
                        help='files decoded on one core (default: 6000)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--single', type=int, nargs=2, metavar=('INDEX', 'OF'),
                        help='(internal) print one core\'s rate on the INDEX-th of OF samples')
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()

    _, listed, _ = image_folders.list_folder(args.folder)
    paths = [path for path, _ in listed['train'] + (listed['test'] or [])]
    stride = max(1, len(paths) // args.sample)
    sample = paths[::stride][:args.sample]
    if args.single:
        index, of = args.single
        mine = paths[index::of][::max(1, len(paths) // of // args.sample)][:args.sample]
        one_core_rate(mine[:200], args.image_size)
        print(one_core_rate(mine, args.image_size))
        return
    one_core_rate(sample[:200], args.image_size)        # warm the file cache and imports

    def bracketed(measure):
        """(the seconds measure() returns, one core's rate: the mean of just
        before and after)."""
        before = one_core_rate(sample, args.image_size)
        seconds = measure()
        return seconds, (before + one_core_rate(sample, args.image_size)) / 2

    def load_folder(data):
        """Seconds of one load_folder into `data` (not the cache folder's cleanup)."""
        start = time.perf_counter()
        data.update(image_folders.load_folder(args.folder, args.image_size, log=lambda _: None))
        return time.perf_counter() - start

    def fresh_cache():
        cache = tempfile.TemporaryDirectory()
        os.environ['XDG_CACHE_HOME'] = cache.name
        return cache

    def decode_all(workers):
        with fresh_cache():
            start = time.perf_counter()
            image_folders.decode_all(paths, args.image_size, 'center', args.folder,
                                     workers=workers)
            return time.perf_counter() - start

    togethers, decodes, wholes, firsts, cached = [], [], [], [], []
    whole_before = len(paths) / decode_all(1)
    for repeat in range(args.repeats):
        single = one_core_rate(sample, args.image_size)
        togethers.append((all_cores_rate(args.folder, args.sample, args.image_size, cores),
                          (single + one_core_rate(sample, args.image_size)) / 2))
        decodes.append(bracketed(lambda: decode_all(cores)))
        whole_after = len(paths) / decode_all(1)
        wholes.append((decodes[-1][0], (whole_before + whole_after) / 2))
        whole_before = whole_after
        with fresh_cache():
            data = {}
            firsts.append(bracketed(lambda: load_folder(data)))
            start = time.perf_counter()
            image_folders.load_folder(args.folder, args.image_size, log=lambda _: None)
            cached.append(time.perf_counter() - start)
        count = len(data['files_train']) + len(data['files_test'])
        print('repeat %d: %d cores at once %.0f pictures/s = %.0f%% of one core x cores; '
              'decoding %.1f s = %.0f%% (%.0f%% of the whole folder on one core); first start '
              '%.1f s = %.0f%%; cached start %.2f s = %.1f%% of the first' % (
                  repeat + 1, cores, togethers[-1][0],
                  100 * togethers[-1][0] / (togethers[-1][1] * cores), decodes[-1][0],
                  100 * len(paths) / decodes[-1][0] / (decodes[-1][1] * cores),
                  100 * len(paths) / wholes[-1][0] / (wholes[-1][1] * cores), firsts[-1][0],
                  100 * count / firsts[-1][0] / (firsts[-1][1] * cores), cached[-1],
                  100 * cached[-1] / firsts[-1][0]), flush=True)

    def median_share(runs, pictures):
        return 100 * statistics.median(pictures / seconds / (single * cores)
                                       for seconds, single in runs)

    median = statistics.median
    print('%d pictures at %dx%d, %d cores (medians of %d; each ratio against one core\'s rate '
          'measured beside it):' % (count, args.image_size, args.image_size, cores,
                                    args.repeats))
    print('  one core: %.0f pictures/s on the sample (%.0f-%.0f), %.0f on the whole folder '
          '(decode_all with one worker; %.0f-%.0f)' % (
              median(single for _, single in decodes), min(single for _, single in decodes),
              max(single for _, single in decodes), median(whole for _, whole in wholes),
              min(whole for _, whole in wholes), max(whole for _, whole in wholes)))
    print('  %d single-core processes at once: %.0f pictures/s = %.0f%% of one core x cores'
          % (cores, median(rate for rate, _ in togethers),
             100 * median(rate / (single * cores) for rate, single in togethers)))
    print('  decoding: %.1f s = %.0f%% of one core x cores on the sample, %.0f%% of the whole '
          'folder on one core x cores' % (median(seconds for seconds, _ in decodes),
                                           median_share(decodes, len(paths)),
                                           median_share(wholes, len(paths))))
    print('  first start: %.1f s = %.0f%% of one core x cores (listing, decoding, caching, '
          'splitting all counted)' % (median(seconds for seconds, _ in firsts),
                                      median_share(firsts, count)))
    print('  cached start: %.2f s = %.1f%% of the first' % (
        median(cached), 100 * median(again / first for again, (first, _) in zip(cached,
                                                                              firsts))))


if __name__ == '__main__':
    main()
