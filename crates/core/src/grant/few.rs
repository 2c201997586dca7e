//! [`Few`]: a list that holds one element inline and only goes to the heap
//! for more. A one-page share or mapping (the common case: ring pages,
//! block and network buffers) then costs no allocation for its refs and
//! handles.

use alloc::vec::Vec;

/// No element, one inline, or many on the heap.
#[derive(Debug, Clone)]
pub(crate) enum Few<T> {
    /// Empty (no allocation).
    Empty,
    /// Exactly one element, inline.
    One(T),
    /// Any number, on the heap.
    Many(Vec<T>),
}

impl<T> Few<T> {
    /// An empty list that will take `n` elements: inline for `n <= 1`.
    pub(crate) fn with_capacity(n: usize) -> Self {
        if n <= 1 {
            Self::Empty
        } else {
            Self::Many(Vec::with_capacity(n))
        }
    }

    /// Appends `v`.
    pub(crate) fn push(&mut self, v: T) {
        match self {
            Self::Empty => *self = Self::One(v),
            Self::One(_) => {
                let Self::One(first) = core::mem::replace(self, Self::Empty) else {
                    unreachable!("matched One above")
                };
                *self = Self::Many(alloc::vec![first, v]);
            }
            Self::Many(vs) => vs.push(v),
        }
    }

    /// The elements.
    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            Self::Empty => &[],
            Self::One(v) => core::slice::from_ref(v),
            Self::Many(vs) => vs,
        }
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Takes the elements out, leaving the list empty.
    pub(crate) fn take(&mut self) -> Self {
        core::mem::replace(self, Self::Empty)
    }

    /// Runs `f` on each element, by value, in order.
    pub(crate) fn for_each(self, mut f: impl FnMut(T)) {
        match self {
            Self::Empty => {}
            Self::One(v) => f(v),
            Self::Many(vs) => vs.into_iter().for_each(f),
        }
    }
}

impl<T: Copy> Few<T> {
    /// A copy of `vs`: inline when it has at most one element.
    pub(crate) fn from_slice(vs: &[T]) -> Self {
        match vs {
            [] => Self::Empty,
            [v] => Self::One(*v),
            _ => Self::Many(vs.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Few;

    #[test]
    fn push_keeps_order_across_inline_and_heap() {
        let mut f = Few::with_capacity(1);
        assert!(f.as_slice().is_empty());
        f.push(1);
        assert!(matches!(f, Few::One(1)));
        f.push(2);
        f.push(3);
        assert_eq!(f.as_slice(), &[1, 2, 3]);
        assert_eq!(f.len(), 3);
        let mut seen = std::vec::Vec::new();
        f.take().for_each(|v| seen.push(v));
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(f.len(), 0);
        assert!(matches!(Few::from_slice(&[7]), Few::One(7)));
        assert_eq!(Few::from_slice(&[7, 8]).as_slice(), &[7, 8]);
    }
}
