//! Per-instrument limit order books built from Databento MBO events (the core
//! behind the `book` handler): socket-free and clock-free, one event at a time.
//!
//! Actions follow Databento's MBO semantics: `A` add, `C` cancel (of the
//! record's size; partial cancels leave the rest), `M` modify (a new price or
//! side loses priority; an unknown order is added), `R` clear, `T`/`F`/`N`
//! leave the book as it is. Price levels are kept in one sorted `Vec` per
//! side with the best level last, so the busy top of the book is the cheap
//! end to change, and nothing allocates once the vectors and the order map
//! have grown to the instrument's working size (a book starts empty, so an
//! instrument without orders costs no order map). Anomalies (cancel of an
//! unknown order, a cancel larger than the order, a duplicate add, a crossed
//! book after the last record of an event, a bad side or action) are counted,
//! never panicked on.
//!
//! Books share an [`OrderBudget`]: the most resting orders they hold between
//! them. An add (or a modify of an unknown order) past it is refused and
//! counted, so a publisher that sends adds and never cancels cannot grow them
//! without end. Every price level holds at least one resting order, so that
//! bounds their memory too; their number per side is bounded as well
//! ([`MAX_LEVELS_PER_SIDE`]), because a new level is a sorted insert that costs
//! the side's depth: a publisher adding orders at ever-new prices would
//! otherwise make every add slower, up to milliseconds.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use super::sequence::WordHasher;

/// One price level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Price in units of 1e-9.
    pub price: i64,
    pub size: u64,
    pub orders: u32,
}

/// Levels of one side, best last.
#[derive(Debug, Default)]
pub struct SideBook {
    /// Bids ascending, asks descending by price: the best level is last.
    levels: Vec<Level>,
    ask: bool,
}

impl SideBook {
    fn new(ask: bool) -> Self {
        SideBook { levels: Vec::new(), ask }
    }

    #[inline]
    fn find(&self, price: i64) -> Result<usize, usize> {
        if self.ask {
            self.levels.binary_search_by(|l| price.cmp(&l.price))
        } else {
            self.levels.binary_search_by(|l| l.price.cmp(&price))
        }
    }

    #[inline]
    fn add(&mut self, price: i64, size: u64) {
        match self.find(price) {
            Ok(i) => {
                self.levels[i].size += size;
                self.levels[i].orders += 1;
            }
            Err(i) => self.levels.insert(i, Level { price, size, orders: 1 }),
        }
    }

    /// Take `size` off the level at `price`, and the order itself when
    /// `whole`; false when there is no such level.
    #[inline]
    fn reduce(&mut self, price: i64, size: u64, whole: bool) -> bool {
        let Ok(i) = self.find(price) else { return false };
        let l = &mut self.levels[i];
        l.size = l.size.saturating_sub(size);
        if whole {
            l.orders = l.orders.saturating_sub(1);
            if l.orders == 0 {
                self.levels.remove(i);
            }
        }
        true
    }

    /// The best level.
    pub fn best(&self) -> Option<&Level> {
        self.levels.last()
    }

    /// Levels from the best outwards.
    pub fn levels(&self) -> impl Iterator<Item = &Level> {
        self.levels.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Order {
    price: i64,
    size: u32,
    ask: bool,
}

/// Anomalies counted while applying events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Anomalies {
    pub unknown_order: u64,
    pub over_cancel: u64,
    pub duplicate_add: u64,
    pub modify_unknown: u64,
    pub crossed: u64,
    pub bad_side: u64,
    pub bad_action: u64,
    /// A cancel or modify whose order's level was missing (book inconsistent).
    pub missing_level: u64,
}

impl Anomalies {
    /// Each count under its report name (`anomaly_*`).
    pub fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("anomaly_unknown_order", self.unknown_order),
            ("anomaly_over_cancel", self.over_cancel),
            ("anomaly_duplicate_add", self.duplicate_add),
            ("anomaly_modify_unknown", self.modify_unknown),
            ("anomaly_crossed", self.crossed),
            ("anomaly_bad_side", self.bad_side),
            ("anomaly_bad_action", self.bad_action),
            ("anomaly_missing_level", self.missing_level),
        ]
    }
}

/// One MBO event, as the book needs it.
#[derive(Debug, Clone, Copy)]
pub struct MboEvent {
    pub order_id: u64,
    pub price: i64,
    pub size: u32,
    pub action: u8,
    pub side: u8,
    pub flags: u8,
}

/// `F_LAST`: the last record of an event (the book is consistent after it).
pub const F_LAST: u8 = 1 << 7;

/// `B` → bid (false), `A` → ask (true), anything else → None.
#[inline]
fn is_ask(side: u8) -> Option<bool> {
    match side {
        b'B' => Some(false),
        b'A' => Some(true),
        _ => None,
    }
}

/// Most price levels a side of one book holds: 16 Ki. A busy book rests its orders on a few
/// hundred to a few thousand prices a side; a new level shifts at most this many (384 KiB,
/// tens of microseconds) instead of a whole runaway side.
pub const MAX_LEVELS_PER_SIDE: usize = 16 * 1024;

/// Why [`OrderBook::apply`] refused an event (the book left as it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookRefusal {
    /// It would add an order past the [`OrderBudget`].
    OrdersFull,
    /// It would add a price level to a side that holds its most.
    LevelsFull,
}

/// The most resting orders a set of books holds between them (the `book`
/// handler's books share one), and the orders refused past it; and the most
/// price levels a side of each of those books holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderBudget {
    held: usize,
    max: usize,
    refused: u64,
    max_levels: usize,
}

impl OrderBudget {
    /// A budget of `max_orders` resting orders, [`MAX_LEVELS_PER_SIDE`] levels a side.
    pub fn new(max_orders: usize) -> Self {
        Self::with_max_levels(max_orders, MAX_LEVELS_PER_SIDE)
    }

    /// A budget of `max_orders` resting orders and `max_levels` price levels a side.
    pub fn with_max_levels(max_orders: usize, max_levels: usize) -> Self {
        OrderBudget { held: 0, max: max_orders, refused: 0, max_levels }
    }

    /// Resting orders held by the books of this budget.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Most price levels a side of each book holds.
    pub fn max_levels(&self) -> usize {
        self.max_levels
    }

    /// Orders refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Room for one more order: taken (true), or the refusal counted (false).
    #[inline]
    fn take(&mut self) -> bool {
        if self.held >= self.max {
            self.refused += 1;
            return false;
        }
        self.held += 1;
        true
    }
}

/// An instrument's book from MBO events.
pub struct OrderBook {
    orders: HashMap<u64, Order, BuildHasherDefault<WordHasher>>,
    pub bids: SideBook,
    pub asks: SideBook,
}

impl Default for OrderBook {
    fn default() -> Self {
        OrderBook { orders: HashMap::default(), bids: SideBook::new(false), asks: SideBook::new(true) }
    }
}

impl OrderBook {
    fn side(&mut self, ask: bool) -> &mut SideBook {
        if ask {
            &mut self.asks
        } else {
            &mut self.bids
        }
    }

    /// Orders resting in the book.
    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    /// True when adding at `price` on side `ask` would make a level the side has no room for.
    #[inline]
    fn no_room_for_level(&self, ask: bool, price: i64, budget: &OrderBudget) -> bool {
        let side = if ask { &self.asks } else { &self.bids };
        side.len() >= budget.max_levels && side.find(price).is_err()
    }

    /// The side (`true`: ask) an add or a modify puts its order on at its price, or what
    /// [`OrderBook::apply`] returns instead: `None` for a side that is neither (counted in
    /// `a.bad_side`), a refusal for a price level the side has no room for.
    #[inline]
    fn placing_side(&self, e: &MboEvent, a: &mut Anomalies, budget: &OrderBudget) -> Result<bool, Option<BookRefusal>> {
        let Some(ask) = is_ask(e.side) else {
            a.bad_side += 1;
            return Err(None);
        };
        if self.no_room_for_level(ask, e.price, budget) {
            return Err(Some(BookRefusal::LevelsFull));
        }
        Ok(ask)
    }

    /// Apply one event; anomalies are counted in `a`, the orders it adds
    /// taken from `budget`. `Some`: it would add an order past the budget
    /// (counted in `budget`) or a level past [`OrderBudget::with_max_levels`],
    /// and was refused, the book unchanged.
    pub fn apply(&mut self, e: &MboEvent, a: &mut Anomalies, budget: &mut OrderBudget) -> Option<BookRefusal> {
        match e.action {
            b'A' => {
                let ask = match self.placing_side(e, a, budget) {
                    Ok(ask) => ask,
                    Err(outcome) => return outcome,
                };
                match self.orders.remove(&e.order_id) {
                    // A duplicate replaces its order: no more are held.
                    Some(old) => {
                        a.duplicate_add += 1;
                        if !self.side(old.ask).reduce(old.price, old.size as u64, true) {
                            a.missing_level += 1;
                        }
                    }
                    None if !budget.take() => return Some(BookRefusal::OrdersFull),
                    None => {}
                }
                self.orders.insert(e.order_id, Order { price: e.price, size: e.size, ask });
                self.side(ask).add(e.price, e.size as u64);
            }
            b'C' => {
                let Some(o) = self.orders.get_mut(&e.order_id) else {
                    a.unknown_order += 1;
                    return None;
                };
                if e.size > o.size {
                    a.over_cancel += 1;
                }
                let take = e.size.min(o.size);
                o.size -= take;
                let (price, ask, whole) = (o.price, o.ask, o.size == 0);
                if whole {
                    self.orders.remove(&e.order_id);
                    budget.held = budget.held.saturating_sub(1);
                }
                if !self.side(ask).reduce(price, take as u64, whole) {
                    a.missing_level += 1;
                }
            }
            b'M' => {
                let ask = match self.placing_side(e, a, budget) {
                    Ok(ask) => ask,
                    Err(outcome) => return outcome,
                };
                match self.orders.get_mut(&e.order_id) {
                    None => {
                        a.modify_unknown += 1;
                        if !budget.take() {
                            return Some(BookRefusal::OrdersFull);
                        }
                        self.orders.insert(e.order_id, Order { price: e.price, size: e.size, ask });
                        self.side(ask).add(e.price, e.size as u64);
                    }
                    Some(o) if o.price != e.price || o.ask != ask => {
                        let old = *o;
                        *o = Order { price: e.price, size: e.size, ask };
                        if !self.side(old.ask).reduce(old.price, old.size as u64, true) {
                            a.missing_level += 1;
                        }
                        self.side(ask).add(e.price, e.size as u64);
                    }
                    Some(o) => {
                        let (old, new) = (o.size as u64, e.size as u64);
                        o.size = e.size;
                        let side = self.side(ask);
                        match side.find(e.price) {
                            Ok(i) => side.levels[i].size = side.levels[i].size.saturating_sub(old) + new,
                            Err(_) => a.missing_level += 1,
                        }
                    }
                }
            }
            b'R' => {
                budget.held = budget.held.saturating_sub(self.orders.len());
                self.orders.clear();
                self.bids.levels.clear();
                self.asks.levels.clear();
            }
            b'T' | b'F' | b'N' => {}
            _ => {
                a.bad_action += 1;
                return None;
            }
        }
        if e.flags & F_LAST != 0 {
            if let (Some(b), Some(s)) = (self.bids.best(), self.asks.best()) {
                if b.price >= s.price {
                    a.crossed += 1;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: u8, side: u8, order_id: u64, price: i64, size: u32) -> MboEvent {
        MboEvent { order_id, price, size, action, side, flags: F_LAST }
    }

    /// A budget no test here reaches.
    fn ample() -> OrderBudget {
        OrderBudget::new(1 << 20)
    }

    #[test]
    fn adds_cancels_modifies_and_clears() {
        let mut b = OrderBook::default();
        let mut a = Anomalies::default();
        let mut budget = ample();
        for e in [
            ev(b'A', b'B', 1, 100, 5),
            ev(b'A', b'B', 2, 101, 3),
            ev(b'A', b'B', 3, 101, 2),
            ev(b'A', b'A', 4, 103, 7),
            ev(b'A', b'A', 5, 102, 1),
        ] {
            b.apply(&e, &mut a, &mut budget);
        }
        assert_eq!(b.bids.best(), Some(&Level { price: 101, size: 5, orders: 2 }));
        assert_eq!(b.asks.best(), Some(&Level { price: 102, size: 1, orders: 1 }));
        b.apply(&ev(b'C', b'B', 2, 101, 1), &mut a, &mut budget); // partial
        assert_eq!(b.bids.best(), Some(&Level { price: 101, size: 4, orders: 2 }));
        b.apply(&ev(b'C', b'A', 5, 102, 1), &mut a, &mut budget); // whole: level goes
        assert_eq!(b.asks.best().map(|l| l.price), Some(103));
        b.apply(&ev(b'M', b'B', 1, 99, 6), &mut a, &mut budget); // price change
        assert_eq!(b.bids.levels().map(|l| (l.price, l.size)).collect::<Vec<_>>(), vec![(101, 4), (99, 6)]);
        b.apply(&ev(b'M', b'B', 3, 101, 9), &mut a, &mut budget); // size change in place
        assert_eq!(b.bids.best().map(|l| l.size), Some(11));
        b.apply(&ev(b'T', b'N', 0, 101, 1), &mut a, &mut budget);
        b.apply(&ev(b'F', b'B', 3, 101, 1), &mut a, &mut budget);
        assert_eq!(b.bids.best().map(|l| l.size), Some(11), "trades and fills leave the book");
        assert_eq!(a, Anomalies::default());
        b.apply(&ev(b'R', b'N', 0, 0, 0), &mut a, &mut budget);
        assert!(b.bids.is_empty() && b.asks.is_empty() && b.orders() == 0);
    }

    #[test]
    fn anomalies_are_counted_not_panicked() {
        let mut b = OrderBook::default();
        let mut a = Anomalies::default();
        let mut budget = ample();
        b.apply(&ev(b'C', b'B', 9, 100, 1), &mut a, &mut budget);
        b.apply(&ev(b'A', b'B', 1, 100, 1), &mut a, &mut budget);
        b.apply(&ev(b'A', b'B', 1, 100, 1), &mut a, &mut budget);
        b.apply(&ev(b'C', b'B', 1, 100, 5), &mut a, &mut budget);
        b.apply(&ev(b'A', b'X', 2, 100, 1), &mut a, &mut budget);
        b.apply(&ev(b'Z', b'B', 2, 100, 1), &mut a, &mut budget);
        b.apply(&ev(b'A', b'B', 3, 105, 1), &mut a, &mut budget);
        b.apply(&ev(b'A', b'A', 4, 104, 1), &mut a, &mut budget);
        b.apply(&ev(b'M', b'A', 5, 110, 1), &mut a, &mut budget);
        assert_eq!(
            a,
            Anomalies {
                unknown_order: 1,
                over_cancel: 1,
                duplicate_add: 1,
                modify_unknown: 1,
                crossed: 2,
                bad_side: 1,
                bad_action: 1,
                missing_level: 0
            }
        );
        assert_eq!(b.bids.len(), 1, "the duplicate replaced the first add, the over-cancel took it");
        assert_eq!((budget.held(), budget.refused()), (b.orders(), 0));
    }

    /// Two books sharing a budget of three orders: adds (and a modify of an unknown order) past
    /// it are refused and counted, the book left as it was; the orders held still change, a
    /// duplicate add replaces its order within the budget, and cancels and a clear give room back.
    #[test]
    fn orders_past_the_budget_are_refused_and_those_held_still_change() {
        let (mut x, mut y) = (OrderBook::default(), OrderBook::default());
        let mut a = Anomalies::default();
        let mut budget = OrderBudget::new(3);
        assert_eq!(x.apply(&ev(b'A', b'B', 1, 100, 5), &mut a, &mut budget), None);
        assert_eq!(x.apply(&ev(b'A', b'A', 2, 102, 5), &mut a, &mut budget), None);
        assert_eq!(y.apply(&ev(b'A', b'B', 7, 50, 1), &mut a, &mut budget), None);
        assert_eq!(
            x.apply(&ev(b'A', b'B', 3, 101, 9), &mut a, &mut budget),
            Some(BookRefusal::OrdersFull),
            "a fourth order"
        );
        assert_eq!(
            y.apply(&ev(b'M', b'A', 8, 51, 1), &mut a, &mut budget),
            Some(BookRefusal::OrdersFull),
            "a modify that would add one"
        );
        assert_eq!((budget.held(), budget.refused(), x.orders(), y.orders()), (3, 2, 2, 1));
        assert_eq!(x.bids.best(), Some(&Level { price: 100, size: 5, orders: 1 }), "the refused add left no level");
        assert_eq!((y.asks.len(), a.modify_unknown), (0, 1));
        // The orders held still change, and a duplicate add replaces one within the budget.
        assert_eq!(x.apply(&ev(b'M', b'B', 1, 99, 4), &mut a, &mut budget), None);
        assert_eq!(x.apply(&ev(b'C', b'A', 2, 102, 2), &mut a, &mut budget), None);
        assert_eq!(y.apply(&ev(b'A', b'B', 7, 49, 2), &mut a, &mut budget), None);
        assert_eq!(x.bids.best(), Some(&Level { price: 99, size: 4, orders: 1 }));
        assert_eq!(x.asks.best(), Some(&Level { price: 102, size: 3, orders: 1 }));
        assert_eq!((y.bids.best().map(|l| l.price), a.duplicate_add, budget.refused()), (Some(49), 1, 2));
        // A whole cancel and a clear give their room back.
        assert_eq!(x.apply(&ev(b'C', b'A', 2, 102, 3), &mut a, &mut budget), None);
        assert_eq!(x.apply(&ev(b'A', b'B', 3, 101, 9), &mut a, &mut budget), None, "room again");
        assert_eq!(x.apply(&ev(b'A', b'B', 4, 101, 1), &mut a, &mut budget), Some(BookRefusal::OrdersFull));
        assert_eq!(y.apply(&ev(b'R', b'N', 0, 0, 0), &mut a, &mut budget), None);
        assert_eq!(x.apply(&ev(b'A', b'B', 4, 101, 1), &mut a, &mut budget), None);
        assert_eq!((budget.held(), budget.refused(), x.orders() + y.orders()), (3, 3, 3));
    }

    /// A side at its most levels refuses an add or a modify at a new price (the book unchanged),
    /// and takes one at a price it has; the other side is not affected, and a level that goes
    /// makes room. Before, levels had no bound: adds at ever-lower bid prices each shifted the
    /// whole side (a 2 M-level probe ran over ten CPU-minutes).
    #[test]
    fn a_side_at_its_most_levels_refuses_a_new_price_and_takes_a_known_one() {
        let mut b = OrderBook::default();
        let mut a = Anomalies::default();
        let mut budget = OrderBudget::with_max_levels(1 << 20, 2);
        assert_eq!(b.apply(&ev(b'A', b'B', 1, 100, 5), &mut a, &mut budget), None);
        assert_eq!(b.apply(&ev(b'A', b'B', 2, 99, 5), &mut a, &mut budget), None);
        assert_eq!(b.apply(&ev(b'A', b'B', 3, 98, 5), &mut a, &mut budget), Some(BookRefusal::LevelsFull));
        assert_eq!(b.apply(&ev(b'M', b'B', 1, 97, 5), &mut a, &mut budget), Some(BookRefusal::LevelsFull));
        assert_eq!(b.apply(&ev(b'A', b'B', 4, 99, 1), &mut a, &mut budget), None, "a known price");
        assert_eq!(b.apply(&ev(b'A', b'A', 5, 101, 1), &mut a, &mut budget), None, "the other side");
        assert_eq!((b.bids.len(), b.orders(), budget.held()), (2, 4, 4), "the refused left no trace");
        assert_eq!(b.bids.best(), Some(&Level { price: 100, size: 5, orders: 1 }), "order 1 did not move");
        assert_eq!(b.apply(&ev(b'C', b'B', 1, 100, 5), &mut a, &mut budget), None);
        assert_eq!(b.apply(&ev(b'A', b'B', 3, 98, 5), &mut a, &mut budget), None, "room again");
        assert_eq!(b.bids.levels().map(|l| l.price).collect::<Vec<_>>(), [99, 98]);
    }
}
