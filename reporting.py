"""What a finished run shows: curves, sample predictions, a confusion matrix,
per-class precision / recall / F1, for any of the scripts.

The numbers use numpy only; the pictures use matplotlib with its
non-interactive Agg backend, so they work without a screen. Every file is
written under a temporary name and renamed, so a crash leaves no half file.
"""

import io
import os
import unicodedata

import numpy as np

from errors import write_file_atomically


# -----------------------------------------------------------------------------
# Numbers
# -----------------------------------------------------------------------------

def confusion_matrix(labels, predictions, classes):
    """counts[i, j]: images of true class i predicted as class j."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predictions)), 1)
    return counts


def per_class_scores(labels, predictions, classes):
    """Precision, recall, F1 and support per class (0 where undefined).

    Returns:
      A dict of arrays of length `classes`.
    """
    counts = confusion_matrix(labels, predictions, classes)
    true_positives = np.diag(counts).astype(np.float64)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(true_positives, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(true_positives, actual, out=np.zeros(classes), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(classes), where=total > 0)
    return {'precision': precision, 'recall': recall, 'f1': f1, 'support': actual}


def display_width(text):
    """Columns `text` takes in a terminal: a Chinese or Japanese character (a
    class folder's name may be one) takes two; a combining accent, a vowel
    sign written over a letter or a zero-width character none."""
    return sum(0 if unicodedata.category(c) in ('Mn', 'Me', 'Cf') else
               2 if unicodedata.east_asian_width(c) in 'WF' else 1 for c in text)


def per_class_table(labels, predictions, class_names):
    """The per-class scores as a text table, with the overall accuracy."""
    scores = per_class_scores(labels, predictions, len(class_names))
    width = max(display_width(name) for name in class_names + ['accuracy'])

    def padded(name):
        return name + ' ' * (width - display_width(name))

    lines = [padded('class') + '  precision  recall     f1  support']
    for i, name in enumerate(class_names):
        lines.append(padded(name) + '  %9.3f  %6.3f  %5.3f  %7d' % (
            scores['precision'][i], scores['recall'][i], scores['f1'][i], scores['support'][i]))
    accuracy = float(np.mean(np.asarray(labels) == np.asarray(predictions)))
    lines.append(padded('accuracy') + '  %24.3f  %7d' % (accuracy, len(labels)))   # under f1
    return '\n'.join(lines)


# -----------------------------------------------------------------------------
# Pictures
# -----------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(figure, path):
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=80, bbox_inches='tight')
    plt.close(figure)
    write_file_atomically(path, buffer.getvalue())
    return path


def plot_history(history, folder):
    """The articles' two plots: training and validation accuracy, then loss,
    against the epoch. Returns the two paths."""
    plt = _pyplot()
    paths = []
    for metric in ('accuracy', 'loss'):
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot(history['epoch'], history[metric], 'o-', label='training ' + metric)
        axes.plot(history['epoch'], history['val_' + metric], 's-',
                  label='validation ' + metric)
        axes.set_xlabel('epoch')
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_ylabel(metric)
        axes.set_title('Training and validation ' + metric)
        axes.legend()
        paths.append(_save(figure, os.path.join(folder, metric + '.png')))
    return paths


def plot_images(images, titles, path, columns=5):
    """A grid of images (N, H, W, 3) in [0, 1] with a title above each."""
    plt = _pyplot()
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows),
                                squeeze=False)
    for i, axis in enumerate(axes.flat):
        axis.axis('off')
        if i < len(images):
            gray = images[i].shape[-1] == 1
            axis.imshow(np.clip(images[i][..., 0] if gray else images[i], 0, 1),
                        interpolation='nearest', cmap='gray' if gray else None,
                        vmin=0, vmax=1)
            axis.set_title(titles[i], fontsize=8)
    return _save(figure, path)


def plot_confusion_matrix(counts, class_names, path):
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 6))
    image = axes.imshow(counts, cmap='Blues')
    figure.colorbar(image)
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha='right')
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel('predicted')
    axes.set_ylabel('true')
    for (i, j), value in np.ndenumerate(counts):
        axes.text(j, i, str(value), ha='center', va='center', fontsize=7,
                  color='white' if value > counts.max() / 2 else 'black')
    axes.set_title('Confusion matrix')
    return _save(figure, path)


def save_report(folder, history, images, labels, predictions, class_names):
    """All the pictures of a finished run; returns their paths."""
    titles = ['True: %s\nPredict: %s' % (class_names[t], class_names[p])
              for t, p in zip(labels, predictions)]
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predictions))[:25]
    paths = plot_history(history, folder) if history.get('epoch') else []
    paths.append(plot_images(images[:25], titles[:25], os.path.join(folder, 'predictions.png')))
    paths.append(plot_images(images[wrong], [titles[i] for i in wrong],
                             os.path.join(folder, 'misclassified.png')))
    paths.append(plot_confusion_matrix(confusion_matrix(labels, predictions, len(class_names)),
                                       class_names, os.path.join(folder,
                                                                 'confusion_matrix.png')))
    return paths
