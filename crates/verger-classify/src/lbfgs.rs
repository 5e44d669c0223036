//! Limited-memory BFGS with a backtracking (Armijo) line search: the textbook two-loop recursion (Nocedal and
//! Wright, algorithm 7.4), enough for the smooth, convex softmax objective.

/// Minimises `f` from `x`, where `f(x, grad)` returns the value and writes the gradient. Returns the
/// iterations run; stops when the largest gradient component is below `tol` or the value stops decreasing.
pub fn minimise(
    x: &mut [f64],
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
    max_iter: usize,
    tol: f64,
) -> (usize, f64) {
    const MEMORY: usize = 10;
    let n = x.len();
    let mut grad = vec![0.0; n];
    let mut value = f(x, &mut grad);
    let (mut s_hist, mut y_hist, mut rho): (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) = (vec![], vec![], vec![]);
    let mut direction = vec![0.0; n];
    let mut trial = vec![0.0; n];
    let mut trial_grad = vec![0.0; n];
    for iter in 0..max_iter {
        if grad.iter().fold(0.0f64, |m, g| m.max(g.abs())) < tol {
            return (iter, value);
        }
        // Two-loop recursion: direction = -H g.
        direction.copy_from_slice(&grad);
        let mut alpha = vec![0.0; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            alpha[i] = rho[i] * dot(&s_hist[i], &direction);
            axpy(-alpha[i], &y_hist[i], &mut direction);
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, y) / dot(y, y);
            direction.iter_mut().for_each(|d| *d *= gamma);
        }
        for i in 0..s_hist.len() {
            let beta = rho[i] * dot(&y_hist[i], &direction);
            axpy(alpha[i] - beta, &s_hist[i], &mut direction);
        }
        direction.iter_mut().for_each(|d| *d = -*d);
        let mut slope = dot(&grad, &direction);
        if slope >= 0.0 {
            // Not a descent direction (curvature information gone stale): restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            direction.iter_mut().zip(&grad).for_each(|(d, g)| *d = -g);
            slope = dot(&grad, &direction);
        }
        // First step of steepest descent scaled to a unit move; L-BFGS steps start at 1.
        let mut step = if s_hist.is_empty() {
            1.0 / direction.iter().fold(0.0f64, |m, d| m.max(d.abs())).max(1e-12)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..40 {
            trial
                .iter_mut()
                .zip(x.iter())
                .zip(&direction)
                .for_each(|((t, xi), d)| *t = xi + step * d);
            let trial_value = f(&trial, &mut trial_grad);
            if trial_value <= value + 1e-4 * step * slope {
                accepted = Some(trial_value);
                break;
            }
            step *= 0.5;
        }
        let Some(new_value) = accepted else {
            return (iter, value);
        };
        let s: Vec<f64> = trial.iter().zip(x.iter()).map(|(t, xi)| t - xi).collect();
        let y: Vec<f64> = trial_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        x.copy_from_slice(&trial);
        grad.copy_from_slice(&trial_grad);
        let decrease = value - new_value;
        value = new_value;
        if sy > 1e-12 {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        if decrease <= 1e-12 * value.abs().max(1.0) {
            return (iter + 1, value);
        }
    }
    (max_iter, value)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(yi, xi)| *yi += a * xi);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_rosenbrock_and_of_a_quadratic() {
        let mut x = vec![-1.2, 1.0];
        let rosenbrock = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        };
        let (_, value) = minimise(&mut x, rosenbrock, 500, 1e-9);
        assert!(
            value < 1e-12 && (x[0] - 1.0).abs() < 1e-5 && (x[1] - 1.0).abs() < 1e-5,
            "{x:?} {value}"
        );

        // Closed form: minimum of sum_i c_i (x_i - i)^2 at x_i = i.
        let mut x = vec![0.0; 5];
        let quadratic = |x: &[f64], g: &mut [f64]| {
            let mut v = 0.0;
            for i in 0..5 {
                let c = (i + 1) as f64;
                g[i] = 2.0 * c * (x[i] - i as f64);
                v += c * (x[i] - i as f64).powi(2);
            }
            v
        };
        minimise(&mut x, quadratic, 100, 1e-10);
        for (i, xi) in x.iter().enumerate() {
            assert!((xi - i as f64).abs() < 1e-8, "{x:?}");
        }
    }
}
